//! Replays the committed corpus through every target body: each file of
//! `corpus/seeds/<target>/` (real captures, see `fuzz/make_seeds.py`) and
//! `corpus/regressions/<target>/` (every crash ever found, kept after its
//! fix) and `corpus/fuzz/<target>/` (minimized inputs libFuzzer found that
//! add coverage, merged in by `scripts/fuzz.sh`). A failure names the file; reproduce it alone with
//! `FUZZ_FILE=<path> cargo test -p fuzz --test replay one_file`.

use std::path::{Path, PathBuf};

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    v.sort();
    v
}

fn replay(kind: &str) -> usize {
    let root = corpus_root().join(kind);
    // Every folder must name a target: a typo would silently replay nothing.
    if let Ok(rd) = std::fs::read_dir(&root) {
        for e in rd {
            let name = e
                .expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            if !name.starts_with('.') && !name.ends_with(".md") {
                assert!(
                    fuzz::target(&name).is_some(),
                    "corpus/{kind}/{name} names no target"
                );
            }
        }
    }
    let mut n = 0;
    for (name, body) in fuzz::TARGETS {
        for f in files(&root.join(name)) {
            let data = std::fs::read(&f).expect("read corpus file");
            let r = std::panic::catch_unwind(|| body(&data));
            assert!(r.is_ok(), "target {name} fails on {}", f.display());
            n += 1;
        }
    }
    n
}

#[test]
fn seeds() {
    let n = replay("seeds");
    // Every target has seeds.
    for (name, _) in fuzz::TARGETS {
        assert!(
            !files(&corpus_root().join("seeds").join(name)).is_empty(),
            "no seeds for {name}"
        );
    }
    assert!(n > 50, "only {n} seeds");
}

#[test]
fn fuzz_found() {
    replay("fuzz");
}

#[test]
fn regressions() {
    replay("regressions");
}

/// `FUZZ_FILE=path [FUZZ_TARGET=name]`: run one file (the target is the
/// file's parent folder unless named). Does nothing without `FUZZ_FILE`.
#[test]
fn one_file() {
    let Ok(path) = std::env::var("FUZZ_FILE") else {
        return;
    };
    // Relative paths are from the repository root (tests run in fuzz/).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    let target = std::env::var("FUZZ_TARGET").unwrap_or_else(|_| {
        path.parent()
            .and_then(|p| p.file_name())
            .expect("file in a target folder")
            .to_string_lossy()
            .into_owned()
    });
    let body = fuzz::target(&target).unwrap_or_else(|| panic!("no target {target}"));
    body(&std::fs::read(&path).expect("read"));
}
