//! Which hosts a plugin may send HTTP requests to: its
//! `allowed_outbound_hosts`, in Spin's notation. Without any, every
//! outgoing request is refused (`HTTP-request-denied`).
//!
//! An entry is `SCHEME://HOST[:PORT]`: `SCHEME` is `http`, `https` or `*`;
//! `HOST` a name or address, `*.example.com` (any name below it) or `*`;
//! `PORT` a number or `*`, else the scheme's own (80, 443). Nothing may
//! follow: no path, query or user.

use std::fmt;

/// One parsed `allowed_outbound_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRule {
    scheme: Option<Scheme>,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `*.suffix`: a name ending in `.suffix` (not `suffix` itself).
    Below(String),
    Exact(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    Any,
    SchemeDefault,
    Exact(u16),
}

/// Why an entry cannot be a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "allowed_outbound_hosts entry {entry:?}: {why} (expected SCHEME://HOST[:PORT], e.g. \"https://api.evotor.ru\")"
)]
pub struct RuleError {
    entry: String,
    why: &'static str,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

impl OutboundRule {
    /// Parses one entry.
    pub fn parse(entry: &str) -> Result<Self, RuleError> {
        let fail = |why| RuleError { entry: entry.into(), why };
        let (scheme, rest) = entry.split_once("://").ok_or_else(|| fail("no scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            "*" => None,
            _ => return Err(fail("the scheme must be http, https or *")),
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(fail("only a scheme, a host and a port: no path, query or user"));
        }
        // `[v6]:port`, `host:port` or just the host.
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (address, after) = v6.split_once(']').ok_or_else(|| fail("an unclosed [ in the host"))?;
                let port = match after {
                    "" => None,
                    _ => Some(after.strip_prefix(':').ok_or_else(|| fail("junk after the IPv6 address"))?),
                };
                address.parse::<std::net::Ipv6Addr>().map_err(|_| fail("not an IPv6 address in [ ]"))?;
                (format!("[{}]", address.to_ascii_lowercase()), port)
            }
            None => match rest.rsplit_once(':') {
                Some((host, port)) => (host.to_ascii_lowercase(), Some(port)),
                None => (rest.to_ascii_lowercase(), None),
            },
        };
        let port = match port {
            None => PortPattern::SchemeDefault,
            Some("*") => PortPattern::Any,
            Some(port) => PortPattern::Exact(port.parse().map_err(|_| fail("the port must be a number or *"))?),
        };
        if port == PortPattern::SchemeDefault && scheme.is_none() {
            return Err(fail("with the scheme *, give the port (a number or *)"));
        }
        let name_ok = |name: &str| {
            !name.is_empty()
                && name.len() <= 253
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        };
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if !name_ok(suffix) {
                return Err(fail("not a host name after *."));
            }
            HostPattern::Below(suffix.to_owned())
        } else if host.starts_with('[') || name_ok(&host) {
            HostPattern::Exact(host)
        } else {
            return Err(fail("not a host name or address"));
        };
        Ok(Self { scheme, host, port })
    }

    /// Whether a request to `uri` is allowed by this rule.
    pub fn allows(&self, uri: &hyper::Uri) -> bool {
        let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => return false,
        };
        let Some(host) = uri.host().map(str::to_ascii_lowercase) else { return false };
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        let scheme_ok = self.scheme.is_none_or(|allowed| allowed == scheme);
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(name) => *name == host,
            HostPattern::Below(suffix) => host.strip_suffix(suffix.as_str()).is_some_and(|head| head.ends_with('.')),
        };
        let port_ok = match self.port {
            PortPattern::Any => true,
            PortPattern::SchemeDefault => self.scheme.is_some_and(|allowed| allowed.default_port() == port),
            PortPattern::Exact(allowed) => allowed == port,
        };
        scheme_ok && host_ok && port_ok
    }
}

impl fmt::Display for OutboundRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Some(Scheme::Http) => "http",
            Some(Scheme::Https) => "https",
            None => "*",
        };
        let host = match &self.host {
            HostPattern::Any => "*".to_owned(),
            HostPattern::Below(suffix) => format!("*.{suffix}"),
            HostPattern::Exact(name) => name.clone(),
        };
        match self.port {
            PortPattern::SchemeDefault => write!(f, "{scheme}://{host}"),
            PortPattern::Any => write!(f, "{scheme}://{host}:*"),
            PortPattern::Exact(port) => write!(f, "{scheme}://{host}:{port}"),
        }
    }
}

/// A plugin's rules: a request is allowed when any rule allows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundRules(Vec<OutboundRule>);

impl OutboundRules {
    /// Parses every entry; the first bad one is the error.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, RuleError> {
        entries.iter().map(|entry| OutboundRule::parse(entry.as_ref())).collect::<Result<_, _>>().map(Self)
    }

    /// Whether any rule allows a request to `uri`.
    pub fn allows(&self, uri: &hyper::Uri) -> bool {
        self.0.iter().any(|rule| rule.allows(uri))
    }

    /// Whether no request is allowed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(rule: &str, uri: &str) -> bool {
        OutboundRule::parse(rule).expect(rule).allows(&uri.parse().expect(uri))
    }

    #[test]
    fn a_rule_allows_its_scheme_host_and_port_only() {
        assert!(allows("https://api.evotor.ru", "https://api.evotor.ru/api/v1/inventories"));
        assert!(allows("https://api.evotor.ru", "https://API.evotor.ru:443/"));
        assert!(!allows("https://api.evotor.ru", "http://api.evotor.ru/"));
        assert!(!allows("https://api.evotor.ru", "https://api.evotor.ru:8443/"));
        assert!(!allows("https://api.evotor.ru", "https://api.evotor.ru.evil.example/"));
        assert!(!allows("https://api.evotor.ru", "https://evil.example/?https://api.evotor.ru"));
        assert!(allows("http://127.0.0.1:8080", "http://127.0.0.1:8080/x"));
        assert!(!allows("http://127.0.0.1:8080", "http://127.0.0.1:8081/x"));
        assert!(allows("http://[::1]:9000", "http://[::1]:9000/"));
    }

    #[test]
    fn wildcards_cover_what_they_say() {
        assert!(allows("https://*.evotor.ru", "https://api.evotor.ru/"));
        assert!(allows("https://*.evotor.ru", "https://a.b.evotor.ru/"));
        assert!(!allows("https://*.evotor.ru", "https://evotor.ru/"));
        assert!(!allows("https://*.evotor.ru", "https://notevotor.ru/"));
        assert!(allows("*://localhost:*", "http://localhost:3000/"));
        assert!(allows("*://localhost:*", "https://localhost/"));
        assert!(allows("http://*:*", "http://anything.example:1/"));
        assert!(!allows("http://*:*", "https://anything.example/"));
    }

    #[test]
    fn entries_that_are_not_rules_are_refused_with_the_reason() {
        for (entry, why) in [
            ("api.evotor.ru", "no scheme"),
            ("ftp://x", "scheme"),
            ("https://x/path", "no path"),
            ("https://user@x", "no path"),
            ("https://x:port", "port"),
            ("https://x:70000", "port"),
            ("*://x", "give the port"),
            ("https://", "host"),
            ("https://*.", "host name"),
            ("https://[zz]:1", "IPv6"),
            ("https://a b", "host"),
        ] {
            let err = OutboundRule::parse(entry).expect_err(entry);
            assert!(err.to_string().contains(why), "{entry}: {err}");
        }
    }

    #[test]
    fn no_rules_allow_nothing_and_rules_print_as_written() {
        assert!(!OutboundRules::default().allows(&"https://api.evotor.ru/".parse().expect("uri")));
        for entry in ["https://api.evotor.ru", "*://*.example.com:*", "http://127.0.0.1:8080"] {
            assert_eq!(OutboundRule::parse(entry).expect(entry).to_string(), entry);
        }
    }
}
