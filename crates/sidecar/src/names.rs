//! stickyd's own header fields, named once. None of them ever comes from a
//! client or goes to one: both codecs drop them from what they receive
//! (request heads and trailers, response heads, interim heads and
//! trailers), a client's `Connection` cannot name them away, and the
//! affinity header (STICKYD_AFFINITY_HEADER) may not be one of them.

/// The hop marker ([`crate::peer`]).
pub const HOP: &str = "x-stickyd-hop";
/// The placement refresher's proof on the admin port ([`crate::peer`]).
pub const PEER: &str = "x-stickyd-peer";
/// What happened to the session, for the app: new, pinned, repinned, unsynced.
pub const SESSION: &str = "x-stickyd-session";
/// A pod's active sessions, on a response to a forwarded request
/// ([`crate::placement`]).
pub const SESSIONS: &str = "x-stickyd-sessions";

/// All of them.
pub const OWN: [&str; 4] = [HOP, PEER, SESSION, SESSIONS];
