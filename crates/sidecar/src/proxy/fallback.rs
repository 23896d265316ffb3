//! The one fallback rule, for both codecs. A request whose upstream failed
//! before any byte of it arrived, and that is whole in hand (the error says
//! it is replayable: a refused peer, a peer that closed an idle connection
//! on a safe request, the app in this pod refusing the connection), goes
//! where [`route::after_failure`] says, once. Anything else is answered.

use super::facts::Facts;
use super::plan::Dest;
use super::respond::Synthetic;
use super::upstream::{Kind, UpstreamError};
use crate::route::{self, Decision, Failed};

/// What follows a failed attempt.
#[derive(Debug)]
pub(super) enum Next<'v> {
    /// One more attempt, there.
    Go(Dest<'v>),
    /// stickyd answers itself.
    Answer(Synthetic),
}

/// After the attempt to `dest` failed with `error`: where the request goes
/// next, or the answer. `first`: no fallback was taken yet (there is at
/// most one). Counts the failure and says why in the log.
pub(super) fn next<'v>(f: &'v Facts<'_>, dest: Dest<'v>, error: &UpstreamError, first: bool) -> Next<'v> {
    let shared = f.shared;
    shared.metrics.upstream_error(error.metric_label());
    let failed = dest.failed();
    // The app's refusal is the only failure of the app in this pod that
    // another pod can take (it has exited); a peer's, any that left the
    // request whole.
    let may = first && error.replayable && (failed == Failed::Peer || error.kind == Kind::Connect);
    if !may {
        match dest {
            Dest::Local { mark, .. } => {
                tracing::warn!(error = %error, "the app in this pod failed");
                shared.count_local(mark);
            }
            Dest::Peer { peer, .. } if error.kind != Kind::Timeout => {
                tracing::warn!(peer = %peer.name, error = %error, "forwarding to the peer failed after the request was sent");
            }
            Dest::Peer { .. } => {}
        }
        return Next::Answer(Synthetic::upstream(error));
    }
    match dest {
        Dest::Local { .. } => {
            tracing::warn!(error = %error, "the app in this pod refused the connection; a ready peer takes the request")
        }
        Dest::Peer { peer, .. } => {
            tracing::info!(peer = %peer.name, addr = %peer.addr, error = %error, "peer unreachable; serving locally")
        }
    }
    let me = shared.this_pod(&f.view);
    match route::after_failure(failed, dest.mark(), &f.view, &me, f.hops, shared.cfg.on_missing, f.pick) {
        Some(Decision::Reject) => {
            shared.count("rejected", None, "");
            Next::Answer(Synthetic::rejected(Some(failed)))
        }
        Some(d) => match Dest::of(d) {
            Some(dest) => Next::Go(dest),
            None => Next::Answer(Synthetic::upstream(error)),
        },
        None => Next::Answer(Synthetic::upstream(error)),
    }
}
