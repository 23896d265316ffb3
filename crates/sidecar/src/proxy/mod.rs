//! The data path: every request's life, in named phases written once
//! ([`pipeline`]), over two codecs that only read and write heads and move
//! bytes: the HTTP/1.1 codec ([`h1`], heads parsed with httparse) and
//! hyper's ([`h2`]: HTTP/2 clients, and every client when the app speaks
//! h2c). The phases, a room each:
//!
//! 1. **screen** ([`screen`]): refuse what a sidecar must never do (CONNECT,
//!    absolute-form targets naming another host, oversized heads);
//! 2. **facts** ([`facts`]): the cookie or header token, the hop markers,
//!    read once from the head; then the decision ([`route::decide`]) on the
//!    endpoint view, loaded lock-free;
//! 3. **the outgoing plan** ([`plan::Outgoing`]): the session field for the
//!    app, the signed hop marker for a peer, the app's cookie unprefixed;
//! 4. **attempts** over [`upstream`] connections, with the one [`fallback`]
//!    rule ([`route::after_failure`]);
//! 5. **the response plan** ([`plan::respond`]): the session token beside
//!    the app's own cookies (where it travels is [`token`]'s, by
//!    STICKYD_AFFINITY), the bookkeeping, stickyd's fields out;
//! 6. **stickyd's own answers** ([`respond::Synthetic`]): one type for every
//!    status stickyd makes itself, with `grpc-status` for gRPC callers.

pub mod body;
mod clock;
mod conn;
mod connect;
mod facts;
mod fallback;
pub mod h1;
mod h2;
pub mod headers;
mod idle;
pub mod listener;
mod pipeline;
mod plan;
mod pool;
mod respond;
mod screen;
mod shared;
mod token;
pub mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

pub use clock::Clock;
pub use conn::{ConnInfo, MAX_BOUND, MAX_BOUND_PEERS, MAX_PEERS_PER_CONN};
pub use connect::{Connector, Dial};
pub use h2::handle;
pub use shared::Shared;

#[cfg(doc)]
use crate::route;

/// Does the app accept a TCP connection within `timeout`?
pub async fn app_reachable(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}
