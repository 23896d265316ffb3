//! A short random search on a stable toolchain, for machines without the
//! nightly one libFuzzer needs: mutations of the committed corpus (bytes
//! flipped, inserted, deleted, HTTP tokens spliced in, inputs crossed) run
//! through a target for a while. A panic prints the input and exits 1.
//!
//! ```sh
//! cargo run --release --manifest-path fuzz/Cargo.toml --no-default-features --features replay \
//!     --bin explore -- h1_request 30
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b": ",
    b" ",
    b"\t",
    b",",
    b";",
    b"\r",
    b"\n",
    b"\0",
    b"#",
    b"?",
    b"%",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked",
    b"Connection: close",
    b"Connection: upgrade",
    b"Upgrade: websocket",
    b"HTTP/1.0",
    b"HTTP/1.1",
    b"0\r\n\r\n",
    b"\xc3\xa9",
    b"\xff",
];

fn mutate(rng: &mut fastrand::Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.usize(1..4) {
        let at = if v.is_empty() { 0 } else { rng.usize(..=v.len()) };
        match rng.u8(..5) {
            0 if !v.is_empty() => {
                let i = rng.usize(..v.len());
                v[i] ^= 1 << rng.u8(..8);
            }
            1 => {
                let t = TOKENS[rng.usize(..TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
            2 if !v.is_empty() => {
                let end = (at + rng.usize(1..8)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 if !other.is_empty() => {
                let from = rng.usize(..other.len());
                let end = (from + rng.usize(1..32)).min(other.len());
                v.splice(at..at, other[from..end].iter().copied());
            }
            _ => v.insert(at, rng.u8(..)),
        }
    }
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map(String::as_str).unwrap_or("h1_request");
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
    let target: fn(&[u8]) = match name {
        "h1_request" => stickyd_fuzz::h1_request,
        "cookie_decode" => stickyd_fuzz::cookie_decode,
        "config_parse" => stickyd_fuzz::config_parse,
        other => {
            eprintln!("unknown target {other}");
            std::process::exit(2);
        }
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(name);
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .collect();
    corpus.sort();
    assert!(!corpus.is_empty(), "{}: empty corpus", dir.display());
    let mut rng = fastrand::Rng::with_seed(secs ^ corpus.len() as u64);
    let until = Instant::now() + Duration::from_secs(secs);
    std::panic::set_hook(Box::new(|_| {}));
    let mut runs = 0u64;
    while Instant::now() < until {
        let a = &corpus[rng.usize(..corpus.len())];
        let b = &corpus[rng.usize(..corpus.len())];
        let input = mutate(&mut rng, a, b);
        if std::panic::catch_unwind(|| target(&input)).is_err() {
            let _ = std::panic::take_hook();
            eprintln!("{name}: panicked on {:?}", String::from_utf8_lossy(&input));
            std::panic::catch_unwind(|| target(&input)).ok();
            std::process::exit(1);
        }
        runs += 1;
    }
    println!("{name}: {runs} inputs in {secs} s, no failure");
}
