//! `TOOL --help`: a manual page for each tool that replaces a Cyrus or
//! Dovecot program, laid out as that program's man page (NAME, SYNOPSIS,
//! DESCRIPTION, OPTIONS, FILES, EXIT STATUS, SEE ALSO) so an administrator
//! finds what the original page promised, plus what corvid adds (marked
//! "corvid:"). Tools without an original page answer `--help` with their
//! own flag summary (clap), so this table has no entry for them.
//!
//! Only the long form `--help` is taken here: the Cyrus tools have no
//! `-h`, and their one-letter flags stay theirs. The flag lists are checked
//! against the tools' own parsers by `bins/tests/operator_help.rs`.

/// The page for `tool`, if it replaces a program that has one.
pub fn page(tool: &str) -> Option<&'static str> {
    Some(match tool {
        "mupdate" => MUPDATE,
        "sync_server" => SYNC_SERVER,
        "sync_client" => SYNC_CLIENT,
        "backupd" => BACKUPD,
        "dsync" => DSYNC,
        "dsync-server" => DSYNC_SERVER,
        _ => return None,
    })
}

const MUPDATE: &str = "\
NAME
       mupdate - MUPDATE server process (corvid)

SYNOPSIS
       mupdate [ -C config-file ] [ -m ] [ -a ]
               [ --listen HOST:PORT ] [ --db FILE ] [ --service NAME ]

DESCRIPTION
       mupdate is the mailboxes database aggregation server of a Cyrus Murder.
       Run by Cyrus master(8), it serves the connection master hands it, as
       Cyrus's mupdate does; corvid serves every connection in one process.
       Without master it listens on --listen.

       It reads its configuration options out of imapd.conf(5) unless
       specified otherwise by -C.

       As a slave it follows the master named by mupdate_server (logging in
       as mupdate_authname / mupdate_username with mupdate_password) and
       serves nobody before its first full copy. Its copy is the frontend's
       own mailboxes.db (mboxlist_db_path, default
       <configdirectory>/mailboxes.db, twoskip), which the frontend's
       imapd and lmtpd route with; entries of local mailboxes in that file
       are never written over. With mupdate_config: unified, mailboxes
       located at this server (servername) stay the local server's own.

       The kick socket <configdirectory>/socket/mupdate.target answers
       \"ok\" once the master's latest changes are stored here; a slave
       without a synced master link does not listen on it, so kicks fail at
       once (as Cyrus's slave). A master answers every kick at once.

       Plain-text mechanisms (PLAIN, LOGIN) are offered only with
       allowplaintext: yes or after STARTTLS (tls_server_cert,
       tls_server_key), as Cyrus offers them.

       The master refuses to run with mupdate_config: unified (as Cyrus);
       with replicated it accepts the repeated writes of backends sharing a
       servername.

OPTIONS
       -C config-file
              Use the specified configuration file rather than /etc/imapd.conf.

       -m     Run as the MUPDATE master. Default is to act as slave.

       -a     Check mupdate_server in imapd.conf to see if this is the
              designated master, and act as master if so; else as slave.

       --listen HOST:PORT
              corvid: listen here instead of on master(8)'s socket.

       --db FILE
              corvid: the database (master default
              <configdirectory>/mupdate.corvid.sqlite3; slave default the
              mailboxes.db above).

       --service NAME
              corvid: the service name for <NAME>_<key> overrides (mupdate).

SIGNALS
       SIGTERM, SIGINT
              Stop accepting; live connections end after the command in
              flight; then exit 0.
       SIGHUP Standalone: re-read and check imapd.conf; the live keys
              (debug, corvid_metrics_listen, TLS files, timeouts, connection
              limits: the table in docs/operations.md) apply at once, every
              other changed key is logged as applying after a restart.
              Under master(8): as SIGTERM (master starts a fresh child).

CONFIGURATION
       corvid_mupdate_idle_timeout
              corvid: a session that completes no command for this long is
              closed (default 3h, Cyrus's fixed value; 0 = never; bare
              numbers are seconds). Partial input does not restart it.

FILES
       /etc/imapd.conf
       <configdirectory>/mupdate.corvid.sqlite3 (master)
       <configdirectory>/mailboxes.db (slave; mboxlist_db_path)
       <configdirectory>/socket/mupdate.target (kick socket)

SEE ALSO
       imapd.conf(5), master(8), corvid config check --help
";

const SYNC_SERVER: &str = "\
NAME
       sync_server - server side of the replication engine (corvid)

SYNOPSIS
       sync_server [ -C config-file ] [ -p ssf ] [ -f ] [ -U uses ] [ -T timeout ]
                   [ -D ] [ --listen HOST:PORT ] [ --imap-listen HOST:PORT ] [ --imap ]

DESCRIPTION
       sync_server is the replica end of Cyrus replication (csync). It is
       normally run by master(8) from the SERVICES section of cyrus.conf; it
       also serves one session on standard input/output, or a port given
       with --listen. Changes are stored in corvid's embedded store under the
       partitions of imapd.conf; an OK is only sent once they are durable.

       It reads its configuration options out of imapd.conf(5) unless
       specified otherwise by -C.

OPTIONS
       -C config-file
              Use the specified configuration file rather than /etc/imapd.conf.

       -p ssf External security strength factor (accepted; informational).

       -f     Force mode: relax the checks that refuse a replica ahead of
              its master.

       -U uses
              master(8)'s reuse count (accepted, ignored: one process serves
              all connections).

       -T timeout
              master(8)'s idle timeout (accepted, ignored).

       -D     Debug (accepted, ignored).

       --listen HOST:PORT
              corvid: listen here instead of master's socket or stdin/stdout.

       --imap-listen HOST:PORT
              corvid: also serve the IMAP-embedded flavour (sync_try_imap).

       --imap corvid: speak the IMAP-embedded flavour on the main socket.

SIGNALS
       SIGTERM, SIGINT
              Stop accepting; every live session ends after the command in
              flight has been applied and answered; exit 0.
       SIGHUP Standalone: re-read and check imapd.conf; the live keys
              (debug, corvid_metrics_listen, TLS files, timeouts, connection
              limits: the table in docs/operations.md) apply at once, every
              other changed key is logged as applying after a restart.
              Under master(8): as SIGTERM (master starts a fresh child).

FILES
       /etc/imapd.conf

SEE ALSO
       sync_client(8), imapd.conf(5), master(8), corvid config check --help
";

const SYNC_CLIENT: &str = "\
NAME
       sync_client - client side of the replication engine (corvid)

SYNOPSIS
       sync_client [ -C config-file ] [ -v ] [ -l ] [ -z ] [ -o ] [ -O ] [ -L ]
                   [ -n channel ] [ -S servername ] [ -p partition ]
                   [ -t timeout ] [ -d delay ] [ -F shutdown_file ] [ -w wait ]
                   [ -N ] [ -f input-file ]
                   -u | -m | -s | -A | -r | -1  [ names... ]

DESCRIPTION
       sync_client is the master end of Cyrus replication. It pushes the
       state of users or mailboxes to a replica sync_server (Cyrus's or
       corvid's), one-shot (-u, -m, -s, -A, -f) or rolling from the sync
       log (-r, -1).

       It reads its configuration options out of imapd.conf(5) unless
       specified otherwise by -C.

OPTIONS
       -C config-file
              Use the specified configuration file rather than /etc/imapd.conf.

       -v     Verbose mode. Use twice (-v -v) to log protocol traffic.

       -l     Verbose logging mode.

       -z     Require compression (fail if the server does not offer it).

       -o     Only attempt to connect to the server once.

       -O     No copyback: never change the local side.

       -L     Local updates only (LOCAL_* commands).

       -n channel
              Use the channel's <channel>_sync_* keys and its sync log.

       -S servername
              Replicate to this host (overrides sync_host).

       -p partition
              Put every mailbox on this partition of the replica.

       -t timeout
              Rolling mode: reconnect every timeout seconds (600).

       -d delay
              Rolling mode: minimum seconds between log runs.

       -F shutdown_file
              Rolling mode: stop when this file appears.

       -w wait
              Wait this many seconds before starting.

       -N     Skip users locked by another sync_client (accepted).

       -f input-file
              With -u/-m/-s: read names from the file (- for stdin);
              alone or with -r/-1: replay this sync log file, then exit.

       -u     Replicate whole users.

       -m     Replicate mailboxes.

       -s     Replicate users' meta data (seen, subscriptions, sieve).

       -A     Replicate every user.

       -r     Rolling replication from the sync log.

       -1     Process the sync log once, then exit.

LOGGING
       Lines go to syslog under master(8) or with CORVID_LOG_TARGET=syslog
       (facility syslog_facility, default LOCAL6), else to stderr.
       CORVID_LOG overrides the level (e.g. CORVID_LOG=debug).

SEE ALSO
       sync_server(8), imapd.conf(5), corvid config check --help
";

const BACKUPD: &str = "\
NAME
       backupd - Cyrus Backups server process (corvid)

SYNOPSIS
       backupd [ -C config-file ] [ -U uses ] [ -T timeout ] [ -D ] [ -s ] [ -N ]
               [ -p ssf ] [ --listen HOST:PORT ]

DESCRIPTION
       backupd is a replication target (sync_client -n CHANNEL) that keeps
       restorable, point-in-time backups under the backuppartition-NAME
       directories of imapd.conf instead of live mailboxes. It is normally
       run by master(8); it also serves one session on standard
       input/output, or a port given with --listen.

       It reads its configuration options out of imapd.conf(5) unless
       specified otherwise by -C.

OPTIONS
       -C config-file
              Use the specified configuration file rather than /etc/imapd.conf.

       -U uses
              Serve this many connections, then exit once they end (as
              master(8)'s reuse count).

       -T timeout
              Exit after timeout seconds without a connection (0: never).

       -D     Run the external debugger (debug_command): not supported;
              said so at startup, otherwise ignored.

       -s, -N Accepted for Cyrus service command lines; no effect.

       -p ssf An external security layer of this strength exists (logged).

       --listen HOST:PORT
              corvid: listen here instead of master's socket or stdin/stdout.

SIGNALS
       SIGTERM, SIGINT
              Stop accepting; live sessions end after the command in flight.
       SIGHUP Standalone: re-read and check imapd.conf; the live keys
              (debug, corvid_metrics_listen, TLS files, timeouts, connection
              limits: the table in docs/operations.md) apply at once, every
              other changed key is logged as applying after a restart.
              Under master(8): as SIGTERM (master starts a fresh child).

SEE ALSO
       corvid backup --help, ctl_backups(8), cyr_backup(8), restore(8), sync_client(8), imapd.conf(5)
";

const DSYNC: &str = "\
NAME
       dsync - mirror or back up mailboxes, Dovecot's dsync protocol (corvid)

SYNOPSIS
       dsync [ -c config ] [ -o setting=value ]... [ -u user ] [ -m mailbox ]
             [ -f ] [ -R ] [ -s state ] [ -T secs ] [ -l secs ] [ -v ] [ -D ]
             mirror|backup LOCATION2

DESCRIPTION
       dsync synchronises the local location (mail_location, from -o or the
       -c file) with LOCATION2. mirror merges changes both ways; backup
       makes LOCATION2 a copy of the local side (with -R, the other way).
       Either side may be real Dovecot (doveadm dsync-server).

       Locations: maildir:PATH (Dovecot Maildir++), corvid:PATH (the
       embedded store). LOCATION2 may also be a command line run as a child
       (its stdin/stdout carry the stream), or host / user@host (ssh).

OPTIONS
       -c config
              Read settings (key = value lines) from config.

       -o setting=value
              Override a setting (e.g. -o mail_location=maildir:~/Maildir).

       -u user
              The user to synchronise.

       -m mailbox
              Synchronise only this mailbox.

       -f     Full sync rather than fast sync.

       -R     Reverse the direction of backup.

       -s state
              Stateful sync from this state; the new state is printed.

       -T secs
              Give up when the peer is silent this long (default 600; 0
              waits forever).

       -l secs
              Wait at most secs for another run's lock on this user
              (default 30). Every run holds Dovecot's fcntl lock on
              HOME/.dovecot-sync.lock for its whole run, HOME being the
              mail_home setting or else the location's directory, so two
              runs for one user (corvid's or doveadm sync -l) never
              interleave.

       -v     Makes dsync more verbose.

       -D     Activates debug messages and makes dsync more verbose.

EXIT STATUS
       0      Synchronised perfectly.
       2      Synchronised, but something changed meanwhile; run again.
       1      Failed.
       75     The user's lock stayed held by another run (temporary).

SEE ALSO
       dsync-server --help, doveadm-sync(1)
";

const DSYNC_SERVER: &str = "\
NAME
       dsync-server - the remote side of dsync (corvid)

SYNOPSIS
       dsync-server [ -c config ] [ -o setting=value ]... [ -u user ]
             [ -T secs ] [ -l secs ]

DESCRIPTION
       Speaks the dsync protocol on standard input/output for the local
       mail_location, as doveadm dsync-server does. Run by dsync (corvid's
       or Dovecot's doveadm sync) as LOCATION2's command line or over ssh.

OPTIONS
       -c config
              Read settings (key = value lines) from config.

       -o setting=value
              Override a setting (e.g. -o mail_location=corvid:/srv/mail/u).

       -u user
              The user to serve.

       -T secs, -l secs
              As dsync's: the peer's silence limit, and the wait for the
              user's lock, which the server holds for the whole session.

SEE ALSO
       dsync --help
";
