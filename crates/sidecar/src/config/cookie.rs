//! The session token's settings: where it travels (STICKYD_AFFINITY and its
//! header, the app's cookie), the cookie's attributes and the keys that sign
//! it.

use std::path::PathBuf;
use std::time::Duration;

use super::registry::{value, var};
use super::values::{file_text, parse_bool, parse_secs};
use super::{ConfigError, Env};
use crate::affinity::Keys;
use crate::startup::Startup;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureMode {
    Always,
    Never,
    /// Secure when the request arrived over https (X-Forwarded-Proto).
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// Where the session token travels (STICKYD_AFFINITY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityMode {
    /// stickyd's own cookie (STICKYD_COOKIE_NAME).
    Cookie,
    /// A request header, answered in a response header of the same name
    /// (STICKYD_AFFINITY_HEADER), for clients that keep no cookies.
    Header,
    /// Both: either is accepted (the header first), both are emitted.
    CookieAndHeader,
    /// The app's own cookie (STICKYD_APP_COOKIE), its value prefixed with
    /// the token (`TOKEN~VALUE`); stickyd adds no cookie of its own.
    AppCookie,
    /// The app's own session header (STICKYD_APP_HEADER, e.g.
    /// `Mcp-Session-Id`), its value prefixed with the token (`TOKEN~VALUE`)
    /// in both directions; stickyd adds nothing of its own.
    AppHeader,
}

impl AffinityMode {
    /// The token is read from and written to stickyd's own cookie.
    pub fn cookie(self) -> bool {
        matches!(self, AffinityMode::Cookie | AffinityMode::CookieAndHeader)
    }

    /// The token is read from and written to the affinity header.
    pub fn header(self) -> bool {
        matches!(self, AffinityMode::Header | AffinityMode::CookieAndHeader)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AffinityMode::Cookie => "cookie",
            AffinityMode::Header => "header",
            AffinityMode::CookieAndHeader => "cookie,header",
            AffinityMode::AppCookie => "app-cookie",
            AffinityMode::AppHeader => "app-header",
        }
    }

    /// The token rides in a carrier of the app's own (its cookie or its
    /// header), prefixed to the app's value.
    pub fn app_carried(self) -> bool {
        matches!(self, AffinityMode::AppCookie | AffinityMode::AppHeader)
    }

    /// A value of STICKYD_AFFINITY (case and spaces aside), or None.
    pub fn parse(raw: &str) -> Option<AffinityMode> {
        let normal: String = raw
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        Some(match normal.as_str() {
            "cookie" => AffinityMode::Cookie,
            "header" => AffinityMode::Header,
            "cookie,header" | "header,cookie" => AffinityMode::CookieAndHeader,
            "app-cookie" => AffinityMode::AppCookie,
            "app-header" => AffinityMode::AppHeader,
            _ => return None,
        })
    }

    /// Whether [`parse_affinity`] refuses `var` set beside this mode: a
    /// carrier of another mode, or stickyd's own cookie name with the app's
    /// cookie.
    pub fn refuses(self, var: &str) -> bool {
        match var {
            "STICKYD_AFFINITY_HEADER" => !self.header(),
            "STICKYD_APP_HEADER" => self != AffinityMode::AppHeader,
            "STICKYD_APP_COOKIE" => self != AffinityMode::AppCookie,
            "STICKYD_COOKIE_NAME" => self == AffinityMode::AppCookie,
            _ => false,
        }
    }
}

/// The cookie's attributes and keys.
#[derive(Debug, Clone)]
pub struct CookieConfig {
    /// The cookie that carries the token: stickyd's own, or the app's in
    /// app-cookie mode (whose attributes below are used only when stickyd
    /// must re-issue the app's cookie itself).
    pub name: String,
    pub path: String,
    pub domain: Option<String>,
    pub max_age: Option<Duration>,
    pub secure: SecureMode,
    pub http_only: bool,
    pub same_site: SameSite,
    pub partitioned: bool,
    /// HMAC keys: the first signs, all verify. Empty: cookies are not signed.
    pub keys: Keys,
    /// Where the keys were read from, to re-read them on rotation.
    pub secret_file: Option<PathBuf>,
    /// Absolute lifetime of a signed session.
    pub max_lifetime: Option<Duration>,
    /// Idle timeout of a signed session.
    pub idle_timeout: Option<Duration>,
}

/// Characters that make a cookie Path a regular expression rather than a
/// literal prefix.
pub const REGEX_CHARS: &[char] = &['(', ')', '|', '$', '*', '?', '[', ']', '\\', '^', '+', '{', '}'];

/// The HMAC keys in the text of STICKYD_COOKIE_SECRET_FILE.
pub(crate) fn secret_file_keys(path: &std::path::Path, text: Result<&str, String>) -> Result<Keys, ConfigError> {
    let error = |message| ConfigError::File {
        var: "STICKYD_COOKIE_SECRET_FILE",
        path: path.display().to_string(),
        message,
    };
    Keys::parse(text.map_err(error)?).map_err(error)
}

/// Reads the HMAC keys from the file named by STICKYD_COOKIE_SECRET_FILE
/// again (a rotated Secret).
pub fn read_secret_file(path: &std::path::Path) -> Result<Keys, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string());
    secret_file_keys(path, text.as_deref().map_err(Clone::clone))
}

/// Cookie name prefixes are matched case-insensitively by browsers.
pub fn has_prefix(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Header names the affinity header must not be: HTTP's own framing,
/// hop-by-hop and cookie fields, and stickyd's other headers.
pub(crate) const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-type",
    "host",
    "cookie",
    "set-cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    crate::names::HOP,
    crate::names::PEER,
    crate::names::SESSION,
    crate::names::SESSIONS,
];

/// STICKYD_AFFINITY and STICKYD_AFFINITY_HEADER; STICKYD_APP_COOKIE is
/// checked against the mode here, and read as the cookie's name by
/// [`parse_cookie`].
pub(crate) fn parse_affinity(env: &dyn Env) -> Result<(AffinityMode, http::HeaderName), ConfigError> {
    const VAR: &str = "STICKYD_AFFINITY";
    let raw = value(env, VAR);
    let mode = match AffinityMode::parse(&raw) {
        Some(mode) => mode,
        None => {
            return Err(ConfigError::invalid(
                VAR,
                &raw,
                "cookie (stickyd's own cookie), header (the STICKYD_AFFINITY_HEADER request and response header), \
                 cookie,header (both), app-cookie (the app's own cookie STICKYD_APP_COOKIE, its value prefixed), or \
                 app-header (the app's own session header STICKYD_APP_HEADER, its value prefixed)",
            ))
        }
    };
    const HEADER: &str = "STICKYD_AFFINITY_HEADER";
    if !mode.header() && var(env, HEADER).is_some() {
        return Err(ConfigError::Conflict {
            var: HEADER,
            message: format!(
                "STICKYD_AFFINITY={} carries no header of stickyd's own; set STICKYD_AFFINITY=header or \
                 cookie,header, or remove it",
                mode.as_str()
            ),
        });
    }
    // The header the token rides in: stickyd's own, or (app-header) the
    // app's, checked alike.
    const APP_HEADER: &str = "STICKYD_APP_HEADER";
    let (header_var, raw) = match (mode, var(env, APP_HEADER)) {
        (AffinityMode::AppHeader, None) => {
            return Err(ConfigError::invalid(
                APP_HEADER,
                "",
                "the name of the app's own session header (e.g. Mcp-Session-Id); required with \
                 STICKYD_AFFINITY=app-header",
            ))
        }
        (AffinityMode::AppHeader, Some(raw)) => (APP_HEADER, raw),
        (_, None) => (HEADER, value(env, HEADER)),
        (_, Some(_)) => {
            return Err(ConfigError::Conflict {
                var: APP_HEADER,
                message: format!(
                    "STICKYD_APP_HEADER is read only with STICKYD_AFFINITY=app-header, not {}",
                    mode.as_str()
                ),
            })
        }
    };
    let name = raw.trim().to_ascii_lowercase();
    let header = http::HeaderName::from_bytes(name.as_bytes())
        .ok()
        .filter(|_| !name.starts_with("grpc-") && !name.ends_with("-bin") && !RESERVED_HEADERS.contains(&name.as_str()))
        .ok_or_else(|| {
            ConfigError::invalid(
                header_var,
                &raw,
                "a header name (letters, digits, '-'), not one of HTTP's own or stickyd's other headers, not a \
                 grpc- name and not ending in -bin (gRPC binary metadata)",
            )
        })?;
    const APP: &str = "STICKYD_APP_COOKIE";
    match (mode, var(env, APP)) {
        (AffinityMode::AppCookie, None) => {
            return Err(ConfigError::invalid(
                APP,
                "",
                "the name of the app's own session cookie (e.g. JSESSIONID); required with STICKYD_AFFINITY=app-cookie",
            ))
        }
        (AffinityMode::AppCookie, Some(_)) if var(env, "STICKYD_COOKIE_NAME").is_some() => {
            return Err(ConfigError::Conflict {
                var: "STICKYD_COOKIE_NAME",
                message: "STICKYD_AFFINITY=app-cookie adds no cookie of its own; the token rides in STICKYD_APP_COOKIE"
                    .into(),
            })
        }
        (AffinityMode::AppCookie, Some(_)) | (_, None) => {}
        (_, Some(_)) => {
            return Err(ConfigError::Conflict {
                var: APP,
                message: format!(
                    "STICKYD_APP_COOKIE is read only with STICKYD_AFFINITY=app-cookie, not {}",
                    mode.as_str()
                ),
            })
        }
    }
    Ok((mode, header))
}

pub(crate) fn parse_cookie(
    env: &dyn Env,
    affinity: AffinityMode,
    startup: &Startup,
) -> Result<CookieConfig, ConfigError> {
    // In app-cookie mode the token rides in the app's cookie, whose name is
    // checked as stickyd's own would be (the __Host- rules included: they
    // bind the attributes of a re-issue).
    let name_var = if affinity == AffinityMode::AppCookie {
        "STICKYD_APP_COOKIE"
    } else {
        "STICKYD_COOKIE_NAME"
    };
    let name = value(env, name_var);
    let name = name.trim().to_string();
    // RFC 6265 cookie-name is an RFC 9110 token.
    let token_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token_ok {
        return Err(ConfigError::invalid(
            name_var,
            &name,
            "a cookie name: letters, digits and !#$%&'*+-.^_`|~ only",
        ));
    }

    let path = value(env, "STICKYD_COOKIE_PATH");
    if let Some(c) = path.chars().find(|c| REGEX_CHARS.contains(c)) {
        return Err(ConfigError::invalid(
            "STICKYD_COOKIE_PATH",
            &path,
            format!(
                "a literal path prefix such as /mysite; {c:?} is regex syntax. A cookie Path is matched literally by \
                 browsers, so a regex Path (the ingress-nginx bug where Path=/mysite(/|$)(.*) was sent) makes them \
                 never send the cookie back and every request starts a new session"
            ),
        ));
    }
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c == ';' || c.is_control()) {
        return Err(ConfigError::invalid(
            "STICKYD_COOKIE_PATH",
            &path,
            "a literal path starting with '/', without spaces or ';'",
        ));
    }

    let domain = var(env, "STICKYD_COOKIE_DOMAIN").map(|d| d.trim().to_string());
    if let Some(d) = &domain {
        let ok = d
            .trim_start_matches('.')
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !ok {
            return Err(ConfigError::invalid(
                "STICKYD_COOKIE_DOMAIN",
                d,
                "a domain name such as example.com",
            ));
        }
    }

    let max_age = parse_secs(env, "STICKYD_COOKIE_MAX_AGE")?;
    if max_age.is_some_and(|d| d.as_secs() == 0) {
        return Err(ConfigError::invalid(
            "STICKYD_COOKIE_MAX_AGE",
            "0",
            "at least 1 second; leave it unset for a session cookie",
        ));
    }

    let secure = match value(env, "STICKYD_COOKIE_SECURE").trim().to_ascii_lowercase().as_str() {
        "auto" => SecureMode::Auto,
        "true" | "1" | "yes" => SecureMode::Always,
        "false" | "0" | "no" => SecureMode::Never,
        other => {
            return Err(ConfigError::invalid(
                "STICKYD_COOKIE_SECURE",
                other,
                "true, false, or auto (Secure when X-Forwarded-Proto is https)",
            ))
        }
    };
    let http_only = parse_bool(env, "STICKYD_COOKIE_HTTPONLY")?;
    let same_site = match value(env, "STICKYD_COOKIE_SAMESITE")
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "lax" => SameSite::Lax,
        "strict" => SameSite::Strict,
        "none" => SameSite::None,
        other => {
            return Err(ConfigError::invalid(
                "STICKYD_COOKIE_SAMESITE",
                other,
                "Strict, Lax or None",
            ))
        }
    };
    let partitioned = parse_bool(env, "STICKYD_COOKIE_PARTITIONED")?;

    if partitioned && secure == SecureMode::Never {
        return Err(ConfigError::Conflict {
            var: "STICKYD_COOKIE_PARTITIONED",
            message: "a Partitioned cookie must be Secure; leave STICKYD_COOKIE_SECURE as auto or true".into(),
        });
    }
    if has_prefix(&name, "__Host-") {
        if secure == SecureMode::Never {
            return Err(ConfigError::Conflict {
                var: "STICKYD_COOKIE_SECURE",
                message: format!(
                    "a cookie named {name:?} (__Host- prefix) must be Secure; remove STICKYD_COOKIE_SECURE=false"
                ),
            });
        }
        if path != "/" {
            return Err(ConfigError::Conflict {
                var: "STICKYD_COOKIE_PATH",
                message: format!("a cookie named {name:?} (__Host- prefix) must have Path=/, not {path:?}"),
            });
        }
        if domain.is_some() {
            return Err(ConfigError::Conflict {
                var: "STICKYD_COOKIE_DOMAIN",
                message: format!("a cookie named {name:?} (__Host- prefix) must not have a Domain"),
            });
        }
    }
    if has_prefix(&name, "__Secure-") && secure == SecureMode::Never {
        return Err(ConfigError::Conflict {
            var: "STICKYD_COOKIE_SECURE",
            message: format!("a cookie named {name:?} (__Secure- prefix) must be Secure"),
        });
    }
    if same_site == SameSite::None && secure == SecureMode::Never {
        return Err(ConfigError::Conflict {
            var: "STICKYD_COOKIE_SECURE",
            message: "SameSite=None requires Secure (browsers reject it otherwise); leave STICKYD_COOKIE_SECURE as auto or true".into(),
        });
    }

    let secret = var(env, "STICKYD_COOKIE_SECRET");
    let secret_file = var(env, "STICKYD_COOKIE_SECRET_FILE").map(PathBuf::from);
    let keys = match (&secret, &secret_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Conflict {
                var: "STICKYD_COOKIE_SECRET_FILE",
                message: "set either STICKYD_COOKIE_SECRET or STICKYD_COOKIE_SECRET_FILE, not both".into(),
            })
        }
        (Some(s), None) => {
            Keys::parse(s).map_err(|why| ConfigError::invalid("STICKYD_COOKIE_SECRET", "<redacted>", why))?
        }
        (None, Some(p)) => secret_file_keys(p, file_text(startup, p))?,
        (None, None) => Keys::default(),
    };

    let max_lifetime = parse_secs(env, "STICKYD_SESSION_MAX_LIFETIME")?;
    let idle_timeout = parse_secs(env, "STICKYD_SESSION_IDLE_TIMEOUT")?;
    for (v, d) in [
        ("STICKYD_SESSION_MAX_LIFETIME", max_lifetime),
        ("STICKYD_SESSION_IDLE_TIMEOUT", idle_timeout),
    ] {
        if let Some(d) = d {
            if keys.is_empty() {
                return Err(ConfigError::Conflict {
                    var: v,
                    message: "session lifetimes need a signed cookie: set STICKYD_COOKIE_SECRET or STICKYD_COOKIE_SECRET_FILE".into(),
                });
            }
            if d.as_secs() < 1 {
                return Err(ConfigError::invalid(v, &format!("{d:?}"), "at least 1 second"));
            }
        }
    }

    Ok(CookieConfig {
        name,
        path,
        domain,
        max_age,
        secure,
        http_only,
        same_site,
        partitioned,
        keys,
        secret_file,
        max_lifetime,
        idle_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// `AffinityMode::refuses` is what `parse_affinity` refuses, mode by
    /// mode and variable by variable (stickyd inject relies on it).
    #[test]
    fn refuses_is_what_the_parser_refuses() {
        let modes = [
            AffinityMode::Cookie,
            AffinityMode::Header,
            AffinityMode::CookieAndHeader,
            AffinityMode::AppCookie,
            AffinityMode::AppHeader,
        ];
        let vars = [
            ("STICKYD_AFFINITY_HEADER", "x-session"),
            ("STICKYD_APP_HEADER", "mcp-session-id"),
            ("STICKYD_APP_COOKIE", "JSESSIONID"),
            ("STICKYD_COOKIE_NAME", "sid"),
            ("STICKYD_COOKIE_PATH", "/"),
        ];
        for mode in modes {
            assert_eq!(
                AffinityMode::parse(&format!(" {} ", mode.as_str().to_uppercase())),
                Some(mode)
            );
            for (var, value) in vars {
                let mut env: BTreeMap<String, String> = BTreeMap::new();
                env.insert("STICKYD_AFFINITY".into(), mode.as_str().into());
                match mode {
                    AffinityMode::AppCookie => env.insert("STICKYD_APP_COOKIE".into(), "JSESSIONID".into()),
                    AffinityMode::AppHeader => env.insert("STICKYD_APP_HEADER".into(), "mcp-session-id".into()),
                    _ => None,
                };
                env.insert(var.into(), value.into());
                let refused = parse_affinity(&env).err().map(|e| e.var().to_string());
                assert_eq!(
                    refused.as_deref() == Some(var),
                    mode.refuses(var),
                    "{} with {var}: {refused:?}",
                    mode.as_str()
                );
            }
        }
        assert_eq!(
            AffinityMode::parse("header,cookie"),
            Some(AffinityMode::CookieAndHeader)
        );
        assert_eq!(AffinityMode::parse("app"), None);
    }
}
