//! Peer proofs: what one sidecar asserts to another, signed with the
//! session keys (STICKYD_COOKIE_SECRET or STICKYD_COOKIE_SECRET_FILE),
//! which every sidecar of a Service shares.
//!
//! Two assertions travel between sidecars:
//!
//! * the hop marker ([`HOP`]) on a forwarded request: "I, FROM, hand this
//!   request to you, TO, now". It keeps the receiving sidecar from
//!   forwarding the request again, lets it pin a new session even while it
//!   drains, and earns the forwarder its active-session count
//!   ([`crate::placement::HEADER`]);
//! * the peer proof ([`PEER`]) on the placement refresher's `GET /sessions`:
//!   "I, FROM, a peer of yours, TO, ask for your count now".
//!
//! With keys, each is `FROM;to=TO;t=UNIX;mac=MAC`: MAC is HMAC-SHA256 under
//! the first key over `stickyd/PURPOSE`, FROM, TO and UNIX (one per line),
//! truncated to 16 bytes and written as 22 base64url characters; every key
//! verifies, as for the session token, so keys rotate the same way. A proof
//! verifies when it names this pod as TO, its time is within [`WINDOW`] of
//! this pod's clock, and its MAC verifies. A marker that does not verify
//! counts as no marker.
//!
//! Without keys a marker is the sender's pod name alone, and nothing can be
//! verified: any client that reaches the sidecar can send one (SECURITY.md
//! says what that allows).

use http::header::HeaderName;

use crate::affinity::Keys;
use crate::route::Hops;

/// The hop marker: set by the sidecar that forwards a request to a peer.
pub const HOP: HeaderName = HeaderName::from_static(crate::names::HOP);
/// The peer proof on the placement refresher's admin requests.
pub const PEER: HeaderName = HeaderName::from_static(crate::names::PEER);
/// How far, in seconds, a proof's time may be from the receiver's clock
/// either way: the clock skew between nodes, and a request's time in
/// flight. A captured marker can be replayed to the same pod this long.
pub const WINDOW: u64 = 60;

/// What a proof asserts; a proof made for one purpose never verifies for
/// another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A forwarded request's hop marker.
    Hop,
    /// The placement refresher's `GET /sessions`.
    Sessions,
}

impl Purpose {
    fn domain(self) -> &'static [u8] {
        match self {
            Purpose::Hop => b"stickyd/hop\n",
            Purpose::Sessions => b"stickyd/sessions\n",
        }
    }
}

/// Why a proof did not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Keys are set, and the proof carries no MAC (a client's, or a sidecar
    /// that runs without keys).
    Unsigned,
    /// Not of the signed form.
    Malformed,
    /// It names another pod as its receiver.
    OtherPod,
    /// Its time is more than [`WINDOW`] from this pod's clock.
    Stale,
    /// Its MAC does not verify under any key.
    Mac,
}

impl Refused {
    /// The `reason` label of `stickyd_hop_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Unsigned => "unsigned",
            Refused::Malformed => "malformed",
            Refused::OtherPod => "other_pod",
            Refused::Stale => "stale",
            Refused::Mac => "mac",
        }
    }
}

fn payload(purpose: Purpose, from: &str, to: &str, t: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(32 + from.len() + to.len());
    p.extend_from_slice(purpose.domain());
    p.extend_from_slice(from.as_bytes());
    p.push(b'\n');
    p.extend_from_slice(to.as_bytes());
    p.push(b'\n');
    p.extend_from_slice(t.to_string().as_bytes());
    p
}

/// The proof that `from` makes to `to` at `now` (Unix seconds): signed with
/// the first key, or `from` alone without keys.
pub fn sign(keys: &Keys, purpose: Purpose, from: &str, to: &str, now: u64) -> String {
    match keys.tag(&payload(purpose, from, to, now)) {
        Some(mac) => format!("{from};to={to};t={now};mac={mac}"),
        None => from.to_string(),
    }
}

/// Checks a proof received by pod `me` at `now`; Ok: the pod that made it.
/// Without keys nothing verifies ([`Refused::Unsigned`]).
pub fn verify<'a>(keys: &Keys, purpose: Purpose, value: &'a [u8], me: &str, now: u64) -> Result<&'a str, Refused> {
    let value = std::str::from_utf8(value).map_err(|_| Refused::Malformed)?.trim();
    let Some((from, rest)) = value.split_once(';') else {
        return Err(if keys.is_empty() || crate::config::valid_pod_name(value) {
            Refused::Unsigned
        } else {
            Refused::Malformed
        });
    };
    if keys.is_empty() {
        return Err(Refused::Unsigned);
    }
    let mut fields = rest.split(';');
    let (Some(to), Some(t), Some(mac), None) = (
        fields.next().and_then(|f| f.strip_prefix("to=")),
        fields.next().and_then(|f| f.strip_prefix("t=")),
        fields.next().and_then(|f| f.strip_prefix("mac=")),
        fields.next(),
    ) else {
        return Err(Refused::Malformed);
    };
    // The one spelling of the time: digits, no sign, no leading zero.
    let t: u64 = match t.parse() {
        Ok(n) if t.bytes().all(|b| b.is_ascii_digit()) && (t == "0" || !t.starts_with('0')) => n,
        _ => return Err(Refused::Malformed),
    };
    if !crate::config::valid_pod_name(from) {
        return Err(Refused::Malformed);
    }
    if to != me {
        return Err(Refused::OtherPod);
    }
    if t.abs_diff(now) > WINDOW {
        return Err(Refused::Stale);
    }
    if !keys.verifies(&payload(purpose, from, to, t), mac) {
        return Err(Refused::Mac);
    }
    Ok(from)
}

/// The hop markers a request arrived with, as the receiving sidecar reads
/// them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Marked<'a> {
    /// The hops the decision counts: with keys, the markers that verified;
    /// without, every marker.
    pub hops: Hops,
    /// With keys, a marker verified: the forwarder is a peer, and may learn
    /// this pod's active sessions.
    pub verified: bool,
    /// The pod that forwarded the request: the first verified marker's
    /// sender, or without keys the first marker as it came.
    pub from: Option<&'a [u8]>,
    /// Why a marker did not verify (the first that did not), with keys.
    pub refused: Option<Refused>,
}

/// Reads the hop markers (`values`, every [`HOP`] field of a request) that
/// pod `me` received at `now`.
pub fn read_hops<'a>(values: impl Iterator<Item = &'a [u8]>, keys: &Keys, me: &str, now: u64) -> Marked<'a> {
    let mut m = Marked {
        hops: 0,
        verified: false,
        from: None,
        refused: None,
    };
    for v in values {
        if keys.is_empty() {
            m.from = m.from.or(Some(v.trim_ascii()));
            m.hops = m.hops.saturating_add(1);
            continue;
        }
        match verify(keys, Purpose::Hop, v, me, now) {
            Ok(from) => {
                m.verified = true;
                m.from = m.from.or(Some(from.as_bytes()));
                m.hops = m.hops.saturating_add(1);
            }
            Err(why) => m.refused = m.refused.or(Some(why)),
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Keys {
        Keys::parse(text).unwrap()
    }

    const K1: &str = "0123456789abcdef0123456789abcdef";
    const K2: &str = "fedcba9876543210fedcba9876543210";
    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_signed_marker_verifies_for_its_receiver_within_the_window() {
        let k = keys(K1);
        let m = sign(&k, Purpose::Hop, "pod-a", "pod-b", NOW);
        assert!(m.starts_with("pod-a;to=pod-b;t=1800000000;mac="), "{m}");
        assert_eq!(m.len(), "pod-a;to=pod-b;t=1800000000;mac=".len() + 22);
        for now in [NOW - WINDOW, NOW, NOW + WINDOW] {
            assert_eq!(
                verify(&k, Purpose::Hop, m.as_bytes(), "pod-b", now),
                Ok("pod-a"),
                "{now}"
            );
        }
        for now in [NOW - WINDOW - 1, NOW + WINDOW + 1, 0, u64::MAX] {
            assert_eq!(
                verify(&k, Purpose::Hop, m.as_bytes(), "pod-b", now),
                Err(Refused::Stale),
                "{now}"
            );
        }
        assert_eq!(
            verify(&k, Purpose::Hop, m.as_bytes(), "pod-c", NOW),
            Err(Refused::OtherPod)
        );
    }

    #[test]
    fn what_the_mac_covers_cannot_be_changed() {
        let k = keys(K1);
        let m = sign(&k, Purpose::Hop, "pod-a", "pod-b", NOW);
        let mac = m.rsplit_once("mac=").unwrap().1;
        for forged in [
            format!("pod-x;to=pod-b;t={NOW};mac={mac}"),
            format!("pod-a;to=pod-b;t={};mac={mac}", NOW + 1),
        ] {
            assert_eq!(
                verify(&k, Purpose::Hop, forged.as_bytes(), "pod-b", NOW),
                Err(Refused::Mac),
                "{forged}"
            );
        }
        // The same assertion for another purpose, or under another key.
        assert_eq!(
            verify(&k, Purpose::Sessions, m.as_bytes(), "pod-b", NOW),
            Err(Refused::Mac)
        );
        assert_eq!(
            verify(&keys(K2), Purpose::Hop, m.as_bytes(), "pod-b", NOW),
            Err(Refused::Mac)
        );
        // Any of the keys verifies; the first signs.
        let rotated = keys(&format!("{K2},{K1}"));
        assert_eq!(verify(&rotated, Purpose::Hop, m.as_bytes(), "pod-b", NOW), Ok("pod-a"));
        let by_rotated = sign(&rotated, Purpose::Hop, "pod-a", "pod-b", NOW);
        assert_eq!(
            verify(&k, Purpose::Hop, by_rotated.as_bytes(), "pod-b", NOW),
            Err(Refused::Mac)
        );
    }

    #[test]
    fn other_spellings_are_malformed() {
        let k = keys(K1);
        let m = sign(&k, Purpose::Hop, "pod-a", "pod-b", NOW);
        let mac = m.rsplit_once("mac=").unwrap().1.to_string();
        for bad in [
            format!("pod-a;to=pod-b;t=0{NOW};mac={mac}"),
            format!("pod-a;to=pod-b;t=+{NOW};mac={mac}"),
            format!("pod-a;to=pod-b;mac={mac};t={NOW}"),
            format!("pod-a;to=pod-b;t={NOW};mac={mac};x=1"),
            format!("pod-a;to=pod-b;t={NOW}"),
            format!("Pod-A;to=pod-b;t={NOW};mac={mac}"),
            "pod-a;".to_string(),
            "x y".to_string(),
        ] {
            assert_eq!(
                verify(&k, Purpose::Hop, bad.as_bytes(), "pod-b", NOW),
                Err(Refused::Malformed),
                "{bad}"
            );
        }
        let short = format!("pod-a;to=pod-b;t={NOW};mac={}", &mac[..21]);
        assert_eq!(
            verify(&k, Purpose::Hop, short.as_bytes(), "pod-b", NOW),
            Err(Refused::Mac)
        );
        assert_eq!(
            verify(&k, Purpose::Hop, &[0xff, b';'], "pod-b", NOW),
            Err(Refused::Malformed)
        );
        // A bare pod name: a sidecar without keys, or a client.
        assert_eq!(verify(&k, Purpose::Hop, b"pod-a", "pod-b", NOW), Err(Refused::Unsigned));
    }

    #[test]
    fn without_keys_the_marker_is_the_name_and_nothing_verifies() {
        let none = Keys::default();
        let m = sign(&none, Purpose::Hop, "pod-a", "pod-b", NOW);
        assert_eq!(m, "pod-a");
        assert_eq!(
            verify(&none, Purpose::Hop, b"pod-a", "pod-b", NOW),
            Err(Refused::Unsigned)
        );
        let signed = sign(&keys(K1), Purpose::Hop, "pod-a", "pod-b", NOW);
        assert_eq!(
            verify(&none, Purpose::Hop, signed.as_bytes(), "pod-b", NOW),
            Err(Refused::Unsigned)
        );
    }

    #[test]
    fn hops_count_verified_markers_with_keys_and_every_marker_without() {
        let k = keys(K1);
        let good = sign(&k, Purpose::Hop, "pod-a", "pod-b", NOW);
        let other = sign(&k, Purpose::Hop, "pod-a", "pod-c", NOW);
        let read = |vals: &[&str], keys: &Keys| {
            let m = read_hops(vals.iter().map(|v| v.as_bytes()), keys, "pod-b", NOW);
            (
                m.hops,
                m.verified,
                m.from.map(|f| String::from_utf8_lossy(f).into_owned()),
                m.refused,
            )
        };
        assert_eq!(read(&[], &k), (0, false, None, None));
        assert_eq!(read(&[&good], &k), (1, true, Some("pod-a".into()), None));
        assert_eq!(read(&[&good, &good], &k), (2, true, Some("pod-a".into()), None));
        assert_eq!(read(&[&good, &good, &good], &k), (3, true, Some("pod-a".into()), None));
        assert_eq!(read(&["pod-a"], &k), (0, false, None, Some(Refused::Unsigned)));
        assert_eq!(
            read(&["pod-x", &good], &k),
            (1, true, Some("pod-a".into()), Some(Refused::Unsigned))
        );
        assert_eq!(read(&[&other], &k), (0, false, None, Some(Refused::OtherPod)));
        let none = Keys::default();
        assert_eq!(
            read(&[" pod-a ", "pod-z"], &none),
            (2, false, Some("pod-a".into()), None)
        );
        assert_eq!(read(&["a", "b", "c"], &none).0, 3);
    }

    #[test]
    fn refusal_labels() {
        let all = [
            Refused::Unsigned,
            Refused::Malformed,
            Refused::OtherPod,
            Refused::Stale,
            Refused::Mac,
        ];
        let labels: Vec<_> = all.iter().map(|r| r.label()).collect();
        assert_eq!(labels, ["unsigned", "malformed", "other_pod", "stale", "mac"]);
    }
}
