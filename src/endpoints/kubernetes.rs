//! The Kubernetes endpoint source: EndpointSlices of this pod's Service.
