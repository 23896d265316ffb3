//! What a Service's EndpointSlices contribute to the view, kept per slice and
//! per pod, so that a changed slice costs work in proportion to its own size,
//! not to the number of pods in the Service.
//!
//! [`SliceIndex::apply`] turns a slice into its entries (one per pod: the
//! sidecar's address and the pod's state), compares them with what the same
//! slice contributed before, and refreshes only the pods whose entries
//! differ. A pod's [`Peer`] is rebuilt only when its address or state
//! changes, keeping its `SessionId`; the name of a pod new to the view is the
//! only one hashed. The index's [`PeerSet`] is the view's peers, changed in
//! place (O(log n) per changed pod) and shared with every view published from
//! it.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::kubernetes::PortSelector;
use super::{Peer, PeerSet, PeerState};

/// The state an endpoint's conditions give it, `None` when it is gone.
///
/// Per the EndpointSlice API: a nil `ready` means ready, a nil `terminating`
/// means not terminating, and a nil `serving` defers to `ready`. A
/// terminating endpoint drains while it is serving; this also holds for
/// Services with `publishNotReadyAddresses`, whose endpoints stay `ready`
/// while they terminate.
fn endpoint_state(ep: &Endpoint) -> Option<PeerState> {
    let c = ep.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
    if terminating {
        serving.then_some(PeerState::Draining)
    } else {
        ready.then_some(PeerState::Ready)
    }
}

/// What one slice says of one pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    addr: SocketAddr,
    state: PeerState,
}

/// What one slice contributes.
#[derive(Default)]
struct SliceEntries {
    /// The slice's resourceVersion when it was applied: a relist that
    /// returns the same version has the same content.
    version: Option<String>,
    entries: HashMap<String, Entry>,
}

pub(super) fn slice_name(s: &EndpointSlice) -> &str {
    s.metadata.name.as_deref().unwrap_or_default()
}

/// A slice's entries, by pod. A pod is identified by `targetRef.name`, or by
/// its address when the endpoint has no targetRef. Its address is the
/// endpoint's first address with the slice port chosen by `port`; slices
/// without that port, FQDN slices and unparsable addresses contribute
/// nothing. A pod listed twice in the slice is Ready if either entry is.
/// Also returns, for a slice with endpoints but without the port, a
/// description of the ports it does have.
fn slice_entries(slice: &EndpointSlice, port: &PortSelector) -> (HashMap<String, Entry>, Option<String>) {
    let mut entries = HashMap::new();
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return (entries, None);
    }
    let Some(port) = port.pick(slice.ports.as_deref().unwrap_or(&[])) else {
        return (entries, (!slice.endpoints.is_empty()).then(|| describe_ports(slice)));
    };
    for ep in &slice.endpoints {
        let Some(state) = endpoint_state(ep) else {
            continue;
        };
        let Some(ip) = ep.addresses.iter().find_map(|a| a.parse::<IpAddr>().ok()) else {
            continue;
        };
        let name = ep
            .target_ref
            .as_ref()
            .and_then(|r| r.name.as_deref())
            .filter(|n| !n.is_empty())
            .map_or_else(|| ip.to_string(), str::to_string);
        let entry = Entry {
            addr: SocketAddr::new(ip, port),
            state,
        };
        match entries.entry(name) {
            MapEntry::Vacant(v) => {
                v.insert(entry);
            }
            MapEntry::Occupied(mut o) => {
                if o.get().state != PeerState::Ready && state == PeerState::Ready {
                    o.insert(entry);
                }
            }
        }
    }
    (entries, None)
}

/// `name [port=number/protocol, …]`, for the warning about slices without
/// the sidecar's port.
fn describe_ports(s: &EndpointSlice) -> String {
    let ports: Vec<String> = s
        .ports
        .iter()
        .flatten()
        .map(|p| {
            format!(
                "{}={}/{}",
                p.name.as_deref().unwrap_or(""),
                p.port.map(|n| n.to_string()).unwrap_or_else(|| "*".into()),
                p.protocol.as_deref().unwrap_or("TCP")
            )
        })
        .collect();
    format!("{} [{}]", slice_name(s), ports.join(", "))
}

/// The entry that makes a pod's peer among those of the slices that list
/// it (usually one; two while the controller moves an endpoint between
/// slices, or for a dual-stack Service): a Ready one over a Draining one,
/// then the one of the slice whose name sorts first.
fn best(entries: &[(Arc<str>, Entry)]) -> Option<Entry> {
    entries
        .iter()
        .min_by(|(sa, a), (sb, b)| {
            (a.state != PeerState::Ready)
                .cmp(&(b.state != PeerState::Ready))
                .then_with(|| sa.cmp(sb))
        })
        .map(|(_, e)| *e)
}

/// A change to the peers, as the index made it.
#[derive(Clone, Debug)]
pub(super) enum Change {
    /// Added, or its address or state changed.
    Set(Arc<Peer>),
    /// Left the view.
    Gone(Arc<Peer>),
}

/// The slices of one Service, and the peers they make.
#[derive(Default)]
pub(super) struct SliceIndex {
    slices: HashMap<Arc<str>, SliceEntries>,
    /// By pod: the entry of each slice that lists it.
    pods: HashMap<String, Vec<(Arc<str>, Entry)>>,
    peers: PeerSet,
    /// Slices with endpoints but without the sidecar's port, by name: the
    /// ports they have.
    unmatched: BTreeMap<Arc<str>, String>,
    unmatched_changed: bool,
    /// Pods whose entries changed, to be settled.
    touched: Vec<String>,
    changes: Vec<Change>,
}

impl SliceIndex {
    /// The peers of every slice applied so far.
    pub(super) fn peers(&self) -> &PeerSet {
        &self.peers
    }

    pub(super) fn slices(&self) -> usize {
        self.slices.len()
    }

    /// The changes since the last call.
    pub(super) fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// The slices without the sidecar's port, if that list changed since the
    /// last call.
    pub(super) fn unmatched_if_changed(&mut self) -> Option<Vec<String>> {
        std::mem::take(&mut self.unmatched_changed).then(|| self.unmatched.values().cloned().collect())
    }

    /// Adds a slice, or replaces the slice of the same name.
    pub(super) fn apply(&mut self, slice: &EndpointSlice, port: &PortSelector) {
        self.set_slice(slice, port);
        self.settle();
    }

    fn set_slice(&mut self, slice: &EndpointSlice, port: &PortSelector) {
        let name = slice_name(slice);
        let key = match self.slices.get_key_value(name) {
            Some((k, _)) => k.clone(),
            None => Arc::from(name),
        };
        let (entries, unmatched) = slice_entries(slice, port);
        self.set_unmatched(&key, unmatched);
        let version = slice.metadata.resource_version.clone();
        let old = self
            .slices
            .insert(key.clone(), SliceEntries { version, entries })
            .unwrap_or_default();
        let new = &self.slices[&key].entries;
        let mut touched: Vec<(String, Option<Entry>)> = new
            .iter()
            .filter(|(pod, e)| old.entries.get(*pod) != Some(*e))
            .map(|(pod, e)| (pod.clone(), Some(*e)))
            .collect();
        touched.extend(
            old.entries
                .into_keys()
                .filter(|pod| !new.contains_key(pod))
                .map(|pod| (pod, None)),
        );
        for (pod, entry) in touched {
            self.set_entry(&key, pod, entry);
        }
    }

    /// Removes the slice named `name`.
    pub(super) fn remove(&mut self, name: &str) {
        self.unset_slice(name);
        self.settle();
    }

    fn unset_slice(&mut self, name: &str) {
        let Some((key, old)) = self.slices.remove_entry(name) else {
            return;
        };
        self.set_unmatched(&key, None);
        for pod in old.entries.into_keys() {
            self.set_entry(&key, pod, None);
        }
    }

    /// Replaces every slice with `listed`: slices that are not listed again
    /// are removed, and of the listed ones only those whose resourceVersion
    /// differs from the one applied are applied again.
    pub(super) fn relist<S: AsRef<EndpointSlice>>(&mut self, listed: &[S], port: &PortSelector) {
        let mut names = HashSet::with_capacity(listed.len());
        for slice in listed.iter().map(AsRef::as_ref) {
            names.insert(slice_name(slice));
            let unchanged = self.slices.get(slice_name(slice)).is_some_and(|s| {
                s.version.is_some() && s.version.as_deref() == slice.metadata.resource_version.as_deref()
            });
            if !unchanged {
                self.set_slice(slice, port);
            }
        }
        let gone: Vec<Arc<str>> = self.slices.keys().filter(|k| !names.contains(&***k)).cloned().collect();
        for name in gone {
            self.unset_slice(&name);
        }
        self.settle();
    }

    fn set_unmatched(&mut self, slice: &Arc<str>, ports: Option<String>) {
        let changed = match ports {
            Some(p) => self
                .unmatched
                .insert(slice.clone(), p.clone())
                .is_none_or(|old| old != p),
            None => self.unmatched.remove(slice).is_some(),
        };
        self.unmatched_changed |= changed;
    }

    /// Sets what `slice` says of `pod` (nothing: `None`); the pod's peer is
    /// brought up to date by [`SliceIndex::settle`], once all the slices of
    /// an operation are in (a pod that moves between two slices of one
    /// relist keeps its peer).
    fn set_entry(&mut self, slice: &Arc<str>, pod: String, entry: Option<Entry>) {
        if let Some(list) = self.pods.get_mut(&pod) {
            match (list.iter().position(|(s, _)| s == slice), entry) {
                (Some(i), Some(e)) => list[i].1 = e,
                (Some(i), None) => {
                    list.swap_remove(i);
                }
                (None, Some(e)) => list.push((slice.clone(), e)),
                (None, None) => return,
            }
            if list.is_empty() {
                self.pods.remove(&pod);
            }
        } else if let Some(e) = entry {
            self.pods.insert(pod.clone(), vec![(slice.clone(), e)]);
        } else {
            return;
        }
        self.touched.push(pod);
    }

    /// Brings the peers of the pods touched since the last call up to date.
    fn settle(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for pod in &touched {
            let best = self.pods.get(pod).and_then(|entries| best(entries));
            self.refresh(pod, best);
        }
        // The allocation is kept for the next event.
        touched.clear();
        self.touched = touched;
    }

    /// Makes the pod's peer that of its best entry, reusing the peer's id
    /// when the pod is in the view already.
    fn refresh(&mut self, pod: &str, best: Option<Entry>) {
        let peer = match (self.peers.by_name(pod), best) {
            (Some(cur), Some(e)) if cur.addr == e.addr && cur.state == e.state => return,
            (Some(cur), Some(e)) => Peer {
                name: cur.name.clone(),
                id: cur.id,
                addr: e.addr,
                state: e.state,
            },
            (None, Some(e)) => Peer::new(pod, e.addr, e.state),
            (Some(_), None) => {
                if let Some(old) = self.peers.remove(pod) {
                    self.changes.push(Change::Gone(old));
                }
                return;
            }
            (None, None) => return,
        };
        let peer = Arc::new(peer);
        self.peers.insert(peer.clone());
        self.changes.push(Change::Set(peer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use proptest::prelude::*;

    const PORT: PortSelector = PortSelector::Number(8080);

    /// (pod, last octet of its address, 0 gone / 1 ready / 2 draining)
    type Ep = (u8, u8, u8);

    fn slice(name: &str, version: Option<u64>, eps: &[Ep]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: version.map(|v| v.to_string()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            endpoints: eps
                .iter()
                .map(|&(pod, ip, state)| Endpoint {
                    addresses: vec![format!("10.0.0.{ip}")],
                    conditions: Some(EndpointConditions {
                        ready: Some(state == 1),
                        serving: Some(state != 0),
                        terminating: Some(state == 2),
                    }),
                    target_ref: Some(ObjectReference {
                        name: Some(format!("pod-{pod}")),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// The view of a set of slices computed from scratch, by the rule the
    /// index keeps: per pod, a Ready entry over a Draining one, then the
    /// entry of the slice whose name sorts first.
    fn from_scratch(slices: &BTreeMap<String, EndpointSlice>) -> Vec<(String, SocketAddr, PeerState)> {
        let mut best: BTreeMap<String, (bool, String, Entry)> = BTreeMap::new();
        for (name, s) in slices {
            for (pod, e) in slice_entries(s, &PORT).0 {
                let cand = (e.state != PeerState::Ready, name.clone(), e);
                let better = best.get(&pod).is_none_or(|b| (cand.0, &cand.1) < (b.0, &b.1));
                if better {
                    best.insert(pod, cand);
                }
            }
        }
        best.into_iter()
            .map(|(pod, (_, _, e))| (pod, e.addr, e.state))
            .collect()
    }

    #[derive(Clone, Debug)]
    enum Op {
        Apply(u8, Vec<Ep>),
        Remove(u8),
        /// Relist: every slice listed again, those named here changed.
        Relist(Vec<(u8, Vec<Ep>)>),
    }

    fn eps() -> impl Strategy<Value = Vec<Ep>> {
        proptest::collection::vec((0u8..10, 1u8..4, 0u8..3), 0..6)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..5, eps()).prop_map(|(s, e)| Op::Apply(s, e)),
            1 => (0u8..5).prop_map(Op::Remove),
            1 => proptest::collection::vec((0u8..5, eps()), 0..3).prop_map(Op::Relist),
        ]
    }

    proptest! {
        /// Whatever the order of applies, removals and relists, the index's
        /// peers are the view computed from scratch; a peer whose address and
        /// state did not change is the same allocation as before, and a name
        /// is hashed only for a pod that was not in the view.
        #[test]
        fn the_index_matches_a_rebuild_and_keeps_unchanged_peers(ops in proptest::collection::vec(op(), 1..40)) {
            let mut index = SliceIndex::default();
            let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
            let mut version = 0u64;
            for op in ops {
                let before = index.peers().clone();
                let hashes = crate::affinity::POD_HASHES.with(|n| n.get());
                match op {
                    Op::Apply(s, e) => {
                        version += 1;
                        let sl = slice(&format!("s{s}"), Some(version), &e);
                        index.apply(&sl, &PORT);
                        slices.insert(format!("s{s}"), sl);
                    }
                    Op::Remove(s) => {
                        index.remove(&format!("s{s}"));
                        slices.remove(&format!("s{s}"));
                    }
                    Op::Relist(changed) => {
                        for (s, e) in changed {
                            version += 1;
                            slices.insert(format!("s{s}"), slice(&format!("s{s}"), Some(version), &e));
                        }
                        let listed: Vec<Arc<EndpointSlice>> = slices.values().cloned().map(Arc::new).collect();
                        index.relist(&listed, &PORT);
                    }
                }
                let got: Vec<_> = index.peers().iter().map(|p| (p.name.clone(), p.addr, p.state)).collect();
                prop_assert_eq!(&got, &from_scratch(&slices));
                let mut new_pods = 0;
                for p in index.peers() {
                    prop_assert_eq!(p.id, crate::affinity::SessionId::for_pod(&p.name));
                    match before.by_name(&p.name) {
                        Some(old) if old.addr == p.addr && old.state == p.state => {
                            prop_assert!(std::ptr::eq(&**old, p), "{} rebuilt", p.name);
                        }
                        Some(_) => {}
                        None => new_pods += 1,
                    }
                }
                // (The check above hashed every name once more.)
                let hashed = crate::affinity::POD_HASHES.with(|n| n.get()) - hashes - index.peers().len() as u64;
                prop_assert!(hashed <= new_pods, "{} names hashed for {} new pods", hashed, new_pods);
            }
        }
    }

    #[test]
    fn slices_without_the_port_are_named_when_that_changes() {
        let mut index = SliceIndex::default();
        let mut bad = slice("web-b", None, &[(1, 2, 1)]);
        bad.ports = Some(vec![
            EndpointPort {
                name: Some("metrics".into()),
                port: Some(9090),
                ..Default::default()
            },
            EndpointPort {
                name: Some("web".into()),
                port: Some(80),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]);
        let mut empty = slice("web-c", None, &[]);
        empty.ports = bad.ports.clone();
        let sel = PortSelector::Name("http".into());
        index.apply(&slice("web-a", None, &[(0, 1, 1)]), &sel);
        assert_eq!(index.unmatched_if_changed(), None);
        index.apply(&bad, &sel);
        index.apply(&empty, &sel);
        assert_eq!(
            index.unmatched_if_changed(),
            Some(vec!["web-b [metrics=9090/TCP, web=80/TCP]".to_string()])
        );
        index.apply(&bad, &sel);
        assert_eq!(index.unmatched_if_changed(), None, "told once");
        index.remove("web-b");
        assert_eq!(index.unmatched_if_changed(), Some(vec![]));
        assert_eq!(index.peers().len(), 1);
    }
}
