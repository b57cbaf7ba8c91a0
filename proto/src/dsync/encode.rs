//! The writer of one direction of a dsync stream: events in, bytes out,
//! byte-identical to what Dovecot 2.3 writes for the same items.
//!
//! Records are laid out against the headers this side announced (taken
//! from the [`Event::Header`]s it encoded, so re-encoding a decoded peer
//! stream uses the peer's exact columns). Bodies are dot-stuffed as they
//! are written, so they pass through in bounded memory.

use bytes::{BufMut, BytesMut};

use super::decode::Event;
use super::dot::DotEncoder;
use super::error::EncodeError;
use super::escape::{escape_into, join_values};
use super::item::encode_item;
use super::schema::{ItemHeader, Schema};

/// Choices for [`Encoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Stuff a dot at offset 0 of a body that starts with `.` (correct, and
    /// read correctly by Dovecot). `false` copies Dovecot's writer, which
    /// does not, and whose own reader then drops that dot.
    pub stuff_leading_dot: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            stuff_leading_dot: true,
        }
    }
}

#[derive(Debug)]
enum Phase {
    Version,
    Headers,
    Records,
    Body(DotEncoder),
    Done,
}

impl Phase {
    fn describe(&self) -> &'static str {
        match self {
            Phase::Version => "before the VERSION line",
            Phase::Headers => "inside the header block",
            Phase::Records => "between records",
            Phase::Body(_) => "inside a body",
            Phase::Done => "after X",
        }
    }
}

/// Writer of one direction of a dsync stream.
#[derive(Debug)]
pub struct Encoder {
    options: EncodeOptions,
    schema: Schema,
    phase: Phase,
}

impl Encoder {
    /// An encoder at the start of a stream.
    pub fn new(options: EncodeOptions) -> Self {
        Self {
            options,
            schema: Schema::new(),
            phase: Phase::Version,
        }
    }

    /// The headers announced so far.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Write Dovecot 2.3's opening: `VERSION\tdsync\t3\t5`, its item
    /// headers ([`Schema::dovecot_3_5`]) and the `.` that ends them.
    pub fn encode_preamble(&mut self, out: &mut BytesMut) -> Result<(), EncodeError> {
        self.encode(&Event::Version { major: 3, minor: 5 }, out)?;
        for h in Schema::dovecot_3_5().headers() {
            self.encode(&Event::Header(h.clone()), out)?;
        }
        self.encode(&Event::HeadersEnd, out)
    }

    /// Append the wire form of `event` to `out`. On error nothing is
    /// written and the encoder is unchanged.
    pub fn encode(&mut self, event: &Event, out: &mut BytesMut) -> Result<(), EncodeError> {
        let order = |event: &'static str, phase: &Phase| EncodeError::OutOfOrder {
            event,
            state: phase.describe(),
        };
        match (event, &mut self.phase) {
            (Event::Version { major, minor }, Phase::Version) => {
                out.put_slice(format!("VERSION\tdsync\t{major}\t{minor}\n").as_bytes());
                self.phase = Phase::Headers;
            }
            (Event::Header(h), Phase::Headers) => {
                if h.chr == b'.' || h.chr == b'\n' {
                    return Err(EncodeError::InvalidValue {
                        item: "header",
                        key: "type byte",
                    });
                }
                out.put_slice(&header_line(h));
                self.schema.insert(h.clone());
            }
            (Event::HeadersEnd, Phase::Headers) => {
                out.put_slice(b".\n");
                self.phase = Phase::Records;
            }
            (Event::Item(item), Phase::Records) => {
                let chr = item.chr();
                if chr == b'.' || chr == b'X' || chr == b'\n' {
                    return Err(EncodeError::InvalidValue {
                        item: "unknown item",
                        key: "type byte",
                    });
                }
                let header = self.schema.get(chr).ok_or(EncodeError::NoHeader { chr })?;
                let values = encode_item(item, header, self.schema.get(b'c'))?;
                let mut line = vec![chr];
                join_values(&mut line, &values);
                line.push(b'\n');
                out.put_slice(&line);
                if item.has_body() {
                    self.phase = Phase::Body(DotEncoder::new(self.options.stuff_leading_dot));
                }
            }
            (Event::EndOfList, Phase::Records) => out.put_slice(b".\n"),
            (Event::Done, Phase::Records) => {
                out.put_slice(b"X\n");
                self.phase = Phase::Done;
            }
            (Event::BodyChunk(data), Phase::Body(dot)) => {
                let mut buf = Vec::with_capacity(data.len() + data.len() / 64 + 1);
                dot.encode(data, &mut buf);
                out.put_slice(&buf);
            }
            (Event::BodyEnd, Phase::Body(_)) => {
                out.put_slice(DotEncoder::END);
                self.phase = Phase::Records;
            }
            (ev, phase) => {
                let name = match ev {
                    Event::Version { .. } => "VERSION",
                    Event::Header(_) => "a header",
                    Event::HeadersEnd => "the end of headers",
                    Event::Item(_) => "a record",
                    Event::EndOfList => "an end of list",
                    Event::BodyChunk(_) => "a body chunk",
                    Event::BodyEnd => "a body end",
                    Event::Done => "X",
                };
                return Err(order(name, phase));
            }
        }
        Ok(())
    }
}

/// `<chr><key>\t<key>...\n`, keys tab-escaped as Dovecot does.
fn header_line(h: &ItemHeader) -> Vec<u8> {
    let mut line = vec![h.chr];
    for (i, k) in h.keys.iter().enumerate() {
        if i > 0 {
            line.push(b'\t');
        }
        escape_into(&mut line, k);
    }
    line.push(b'\n');
    line
}
