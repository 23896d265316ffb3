//! The service-link rule: the variables the kubelet injects for a Service
//! named `stickyd` or `stickyd-…` are not stickyd's, and a name of that shape
//! is not refused as a misspelling.

use std::net::SocketAddr;

/// Whether `name` (with `value`, when known) is one of the variables the
/// kubelet sets for a Service named `stickyd` or `stickyd-<name>` in the
/// pod's namespace: `…_SERVICE_HOST`, `…_SERVICE_PORT`,
/// `…_SERVICE_PORT_<PORT NAME>`, `…_PORT`, `…_PORT_<N>_<PROTO>` and that
/// followed by `_PROTO`, `_PORT` or `_ADDR`.
pub fn is_service_link(name: &str, value: Option<&str>) -> bool {
    let Some(rest) = name.strip_prefix("STICKYD") else {
        return false;
    };
    // A Service or port name as the kubelet writes it: upper case, '-' as '_'.
    let env_name = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    };
    let value_is = |check: &dyn Fn(&str) -> bool| value.is_none_or(|v| check(v.trim()));
    let ip = |v: &str| v.parse::<std::net::IpAddr>().is_ok();
    let port = |v: &str| v.parse::<u16>().is_ok();
    // `tcp://10.0.0.1:80`, `udp://[fd00::1]:53`: the protocol and the port.
    let url = |v: &str| {
        let (proto, addr) = v.split_once("://")?;
        let addr: SocketAddr = addr.parse().ok()?;
        matches!(proto, "tcp" | "udp" | "sctp").then(|| (proto.to_ascii_uppercase(), addr.port()))
    };
    // Every split into `<service part><link suffix>`, the service part
    // being empty (Service "stickyd") or `_<NAME>` (Service "stickyd-name").
    (0..=rest.len()).filter(|&i| rest.is_char_boundary(i)).any(|i| {
        let (service, link) = rest.split_at(i);
        if !(service.is_empty() || service.strip_prefix('_').is_some_and(env_name)) {
            return false;
        }
        match link {
            "_SERVICE_HOST" => return value_is(&ip),
            "_SERVICE_PORT" => return value_is(&port),
            "_PORT" => return value_is(&|v| url(v).is_some()),
            _ => {}
        }
        if let Some(port_name) = link.strip_prefix("_SERVICE_PORT_") {
            return env_name(port_name) && value_is(&port);
        }
        // _PORT_<N>_<PROTO>, and that followed by _PROTO, _PORT or _ADDR.
        let Some((number, proto_and_field)) = link.strip_prefix("_PORT_").and_then(|l| l.split_once('_')) else {
            return false;
        };
        // The number as the kubelet writes it: digits, no sign, no leading zero.
        let Some(n) = number.parse::<u16>().ok().filter(|n| n.to_string() == number) else {
            return false;
        };
        let (proto, field) = proto_and_field.split_once('_').unwrap_or((proto_and_field, ""));
        if !matches!(proto, "TCP" | "UDP" | "SCTP") {
            return false;
        }
        match field {
            "" => value_is(&|v| url(v) == Some((proto.to_string(), n))),
            "PROTO" => value_is(&|v| v.eq_ignore_ascii_case(proto)),
            "PORT" => value_is(&|v| v.parse() == Ok(n)),
            "ADDR" => value_is(&ip),
            _ => false,
        }
    })
}
