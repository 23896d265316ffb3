//! The apiserver double for the endpoint churn benchmark
//! (`tests/load/bench/churn.sh`): a Service of many pods in EndpointSlices
//! of 100, and one slice flipping readiness at a set rate while told to.
//!
//! ```text
//! cargo run --example churn_apiserver -- LISTEN KUBECONFIG_DIR [PODS] [PER_SLICE] [HZ] [PORT]
//! ```
//!
//! It serves the double on LISTEN (loopback), writes `KUBECONFIG_DIR/kubeconfig`
//! pointing at it, prints `ready <url>` once every slice is written, and then
//! reads commands on standard input, one a line:
//! - `churn on`: start flipping, HZ times a second;
//! - `churn off`: stop, print `flips <n> <seconds>` for the run just
//!   ended, and bring back the pod the last flip took out, if any;
//! - `quit`, or the end of the input: exit.
//!
//! Pod 0 (`pod-00000`) is on 127.0.0.1, the sidecar under test; the others
//! are on 127.1.0.0/16, all on PORT (default 18710). The namespace is
//! `bench`, the Service `web`.

#[path = "../tests/apiserver/mod.rs"]
mod apiserver;

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use apiserver::fleet::{Fleet, Flipper};
use apiserver::ApiServer;
use tokio::sync::mpsc;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i)
        .map(|a| a.parse().unwrap_or_else(|_| panic!("argument {i}: cannot parse {a:?}")))
        .unwrap_or(default)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: churn_apiserver LISTEN KUBECONFIG_DIR [PODS] [PER_SLICE] [HZ] [PORT]");
        std::process::exit(2);
    }
    let listen: SocketAddr = arg(&args, 0, "127.0.0.1:0".parse().unwrap());
    assert!(listen.ip().is_loopback(), "the double listens on loopback only");
    let dir = std::path::PathBuf::from(&args[1]);
    let fleet = Fleet {
        namespace: "bench".into(),
        service: "web".into(),
        port: arg(&args, 5, 18710),
        pods: arg(&args, 2, 5000),
        per_slice: arg(&args, 3, 100),
        first: IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let hz: f64 = arg(&args, 4, 18.0);

    let listener = std::net::TcpListener::bind(listen).expect("bind the double");
    let api = ApiServer::on_listener(listener, Duration::from_secs(1));
    fleet.publish(&api);
    let kubeconfig = api.write_kubeconfig(&dir);
    println!(
        "ready {} {} slices of {} pods, kubeconfig {}",
        api.url(),
        fleet.slices(),
        fleet.per_slice,
        kubeconfig.display()
    );

    // Standard input on a thread of its own; its end ends the double.
    let (tx, mut commands) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim().to_string()).is_err() {
                break;
            }
        }
    });

    let mut flipper = Flipper::default();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / hz));
    // A late flip is not made up for with a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running: Option<(Instant, u64)> = None;
    let started = Instant::now();
    loop {
        tokio::select! {
            command = commands.recv() => match command.as_deref().inspect(|c| eprintln!("{:.3} {c}", started.elapsed().as_secs_f64())) {
                Some("churn on") => {
                    tick.reset();
                    running = Some((Instant::now(), flipper.flips));
                }
                Some("churn off") => {
                    if let Some((since, flips)) = running.take() {
                        println!("flips {} {:.3}", flipper.flips - flips, since.elapsed().as_secs_f64());
                    }
                    // Every pod ready again for what comes next.
                    if flipper.out(&fleet).is_some() {
                        flipper.flip(&fleet, &api);
                    }
                }
                Some("quit") | None => break,
                Some("") => {}
                Some(other) => eprintln!("unknown command {other:?}"),
            },
            _ = tick.tick(), if running.is_some() => flipper.flip(&fleet, &api),
        }
    }
}
