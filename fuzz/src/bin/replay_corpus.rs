//! Runs every input of the committed corpus (`fuzz/corpus/<target>/`)
//! through its fuzz target, on a stable toolchain:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --no-default-features --features replay --bin replay_corpus
//! ```
//!
//! Exits non-zero if a corpus is missing or empty; a panic in a target fails
//! the run with the input's path.

use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let targets: [(&str, Target); 3] = [
        ("cookie_decode", stickyd_fuzz::cookie_decode),
        ("config_parse", stickyd_fuzz::config_parse),
        ("h1_request", stickyd_fuzz::h1_request),
    ];
    let mut total = 0;
    for (name, run) in targets {
        let dir = root.join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: empty corpus", dir.display());
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            if outcome.is_err() {
                eprintln!("{name}: {} panicked", f.display());
                std::process::exit(1);
            }
        }
        println!("{name}: {} inputs replayed", files.len());
        total += files.len();
    }
    println!("replay: {total} passed, 0 failed");
}
