//! The floor of an HTTP/2 server in Rust: "ok\n" to every request, with no
//! upstream and no routing. What stickyd's HTTP/2 path costs beyond this is
//! its own; what this costs beside HAProxy's `http-request return` is the
//! HTTP/2 stack's. One worker thread, jemalloc, as stickyd runs.
//!
//!   MODE=hyper ADDR=127.0.0.1:PORT h2floor   hyper's HTTP/2 server (stickyd's)
//!   MODE=h2    ADDR=127.0.0.1:PORT h2floor   the h2 crate driven directly,
//!                                            each stream answered in a task
#![forbid(unsafe_code)]

use bytes::Bytes;
use std::convert::Infallible;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

async fn respond(mut tx: h2::server::SendResponse<Bytes>) {
    let resp = http::Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(())
        .expect("a valid head");
    if let Ok(mut s) = tx.send_response(resp, false) {
        let _ = s.send_data(Bytes::from_static(b"ok\n"), true);
    }
}

async fn serve(mode: &str, s: tokio::net::TcpStream) {
    if mode == "hyper" {
        let svc = hyper::service::service_fn(|_req| async {
            Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(Bytes::from_static(
                b"ok\n",
            ))))
        });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
            .await;
        return;
    }
    let Ok(mut conn) = h2::server::handshake(s).await else {
        return;
    };
    while let Some(Ok((req, tx))) = conn.accept().await {
        drop(req);
        tokio::spawn(respond(tx));
    }
}

fn main() {
    let mode = std::env::var("MODE").unwrap_or_else(|_| "hyper".into());
    if mode != "hyper" && mode != "h2" {
        eprintln!("h2floor: MODE is hyper or h2, not {mode}");
        std::process::exit(2);
    }
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:18950".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(&addr)
            .await
            .unwrap_or_else(|e| panic!("h2floor: bind {addr}: {e}"));
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            let _ = s.set_nodelay(true);
            let mode = mode.clone();
            tokio::spawn(async move { serve(&mode, s).await });
        }
    });
}
