//! Every request's life, written once for both codecs, as pingora's
//! `process_request` is: the phases in order, each calling its room, and a
//! [`Codec`] that only reads heads, writes them and moves bytes.
//!
//! 1. **screen** ([`screen`](super::screen)): refuse what a sidecar must never do;
//! 2. **facts** ([`Facts`]), read once from the head;
//! 3. **decide** ([`route::decide`](crate::route::decide)) on the endpoint view;
//! 4. **the outgoing plan** ([`Outgoing`]): the session field, the hop
//!    marker, the app's cookie;
//! 5. **attempts**: the codec sends the request and relays the response,
//!    whose **response plan** ([`plan::respond`](super::plan::respond)) it
//!    asks for; a failure takes the one fallback rule ([`fallback::next`]),
//!    at most once, in this loop;
//! 6. **answers** of stickyd's own, one [`Synthetic`] for both codecs.

use super::facts::{Facts, HeadView};
use super::fallback::{self, Next};
use super::plan::{Dest, Outgoing};
use super::respond::Synthetic;
use super::screen;
use super::upstream::UpstreamError;
use super::Shared;

/// How an attempt failed.
pub(super) enum Failure<D> {
    /// The upstream failed before any byte of a response reached the
    /// client; the error says whether the request may go elsewhere.
    Upstream(UpstreamError),
    /// stickyd answers instead (the client's body stalled or broke).
    Answer(Synthetic),
    /// Nothing more to send: the client went away.
    Done(D),
}

/// What a codec does for the phases: show the request head, send one
/// attempt and relay its response, and write stickyd's own answers.
pub(super) trait Codec {
    /// How serving a request ends: the HTTP/1.1 codec's word on its
    /// connection, hyper's response.
    type Done;
    /// The request head, as the phases read it.
    type Head<'h>: HeadView
    where
        Self: 'h;

    fn head(&self) -> Self::Head<'_>;

    /// Sends the request to `dest` with the outgoing plan `out`, and relays
    /// the response with the plan [`plan::respond`](super::plan::respond)
    /// makes of its head. Err: nothing was written to the client.
    async fn attempt(
        &mut self,
        f: &Facts<'_>,
        dest: Dest<'_>,
        out: &Outgoing<'_>,
    ) -> Result<Self::Done, Failure<Self::Done>>;

    /// Writes one of stickyd's own answers; `f`: the request's facts, when
    /// they were read (not for a request refused by the screen).
    async fn answer(&mut self, f: Option<&Facts<'_>>, s: Synthetic) -> Self::Done;
}

/// One request through its phases.
pub(super) async fn process<C: Codec>(shared: &Shared, codec: &mut C) -> C::Done {
    // Phase 1: screen.
    let refused = screen::screen(&codec.head(), shared.cfg.max_header_bytes);
    if let Some(refused) = refused {
        shared.metrics.bad_request(refused.metric_label());
        return codec.answer(None, Synthetic::refused(refused)).await;
    }

    // Phase 2: the facts, and the decision on them.
    let mut facts = Facts::new(shared, &codec.head());
    facts.wait_for_the_view().await;
    let decision = facts.decide();
    tracing::debug!(
        method = %String::from_utf8_lossy(codec.head().method()),
        cookie = cookie_label(&facts.cookie),
        hops = facts.hops,
        decision = ?decision,
        "route"
    );
    let Some(mut dest) = Dest::of(decision) else {
        shared.count("rejected", None, "");
        return codec.answer(Some(&facts), Synthetic::rejected(None)).await;
    };

    // Phase 3: attempts, with the one fallback.
    let mut first = true;
    loop {
        let out = Outgoing::to(&facts, dest);
        let _holds = match dest {
            Dest::Local { mark, .. } => facts.holds_the_drain(mark),
            Dest::Peer { .. } => None,
        };
        let error = match codec.attempt(&facts, dest, &out).await {
            Ok(done) | Err(Failure::Done(done)) => return done,
            Err(Failure::Answer(s)) => return codec.answer(Some(&facts), s).await,
            Err(Failure::Upstream(e)) => e,
        };
        match fallback::next(&facts, dest, &error, first) {
            Next::Go(next) => dest = next,
            Next::Answer(s) => return codec.answer(Some(&facts), s).await,
        }
        first = false;
    }
}

fn cookie_label(c: &crate::affinity::CookieState) -> &'static str {
    use crate::affinity::CookieState;
    match c {
        CookieState::Absent => "absent",
        CookieState::Invalid => "invalid",
        CookieState::Valid(_) => "valid",
    }
}
