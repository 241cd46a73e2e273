//! The channels notifications go out on (webhooks and Slack over HTTP, e-mail over SMTP),
//! their configuration, and the rules destinations follow: one rule for the addresses HTTP
//! calls may reach ([`reach`]), one parser for e-mail recipients ([`check_recipient`]).
//!
//! Every outbound call is bounded: HTTP requests time out after [`HTTP_TIMEOUT`] (connecting
//! included), never follow redirects (a 3xx is a failed attempt), go through no proxy, and
//! their response bodies are never read; SMTP conversations time out after
//! [`SMTP_TIMEOUT`]. Host names are resolved to public addresses only (loopback too when
//! `INTEGRATIONS_ALLOW_HTTP_LOOPBACK` is on), so a destination whose name points inside the
//! network is refused at delivery time as IP literals are refused when it is configured.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::one_line;
use crate::config::ConfigError;
use crate::domain::{DomainError, DomainResult, excerpt};

/// Longest destination URL accepted, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Time limit of one HTTP delivery attempt (resolving and connecting included).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Time limit of connecting, within [`HTTP_TIMEOUT`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time limit of each SMTP command, and of a whole message ([`SMTP_TIMEOUT`] × 3).
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The sender of notification e-mails without `SMTP_FROM`.
pub const DEFAULT_FROM: &str = "Workspaces <notifications@localhost>";

/// Settings of the notification channels (`INTEGRATIONS_ALLOW_HTTP_LOOPBACK`, `SMTP_URL`,
/// `SMTP_FROM`).
#[derive(Clone, Default)]
pub struct NotificationConfig {
    /// Development only: destinations may be `http://` URLs of loopback addresses
    /// (127.0.0.1, ::1, localhost), and names may resolve to loopback addresses.
    pub allow_http_loopback: bool,
    /// The SMTP server (`smtp://host:port` in plain text, `smtp://…?tls=required` for
    /// STARTTLS, `smtps://user:pass@host` for TLS); without it e-mail deliveries fail.
    pub smtp_url: Option<String>,
    /// The `From` of notification e-mails.
    pub smtp_from: Option<String>,
}

impl std::fmt::Debug for NotificationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The SMTP URL may hold a password.
        f.debug_struct("NotificationConfig")
            .field("allow_http_loopback", &self.allow_http_loopback)
            .field(
                "smtp_url",
                &self.smtp_url.as_deref().map(crate::config::redact_url),
            )
            .field("smtp_from", &self.smtp_from)
            .finish()
    }
}

fn config_error(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

impl NotificationConfig {
    /// Reads the settings through `var`; `production` refuses the development flag.
    pub fn from_lookup(
        var: &impl Fn(&'static str) -> Option<String>,
        production: bool,
    ) -> Result<Self, ConfigError> {
        const FLAG: &str = "INTEGRATIONS_ALLOW_HTTP_LOOPBACK";
        let allow_http_loopback = match var(FLAG).map(|v| v.trim().to_ascii_lowercase()) {
            None => false,
            Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => true,
            Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => false,
            Some(v) => {
                return Err(config_error(FLAG, format!("`{v}` is not true or false")));
            }
        };
        if allow_http_loopback && production {
            return Err(config_error(
                FLAG,
                "is a development setting and cannot be on in production",
            ));
        }
        let smtp_url = var("SMTP_URL").map(|u| u.trim().to_string());
        if let Some(u) = &smtp_url {
            let scheme_ok = u.starts_with("smtp://") || u.starts_with("smtps://");
            if !scheme_ok || AsyncSmtpTransport::<Tokio1Executor>::from_url(u).is_err() {
                return Err(config_error(
                    "SMTP_URL",
                    format!(
                        "`{}` is not an SMTP URL (smtp://host:port, smtp://host?tls=required or smtps://user:password@host)",
                        crate::config::redact_url(u)
                    ),
                ));
            }
        }
        let smtp_from = var("SMTP_FROM").map(|f| f.trim().to_string());
        if let Some(f) = &smtp_from
            && f.parse::<Mailbox>().is_err()
        {
            return Err(config_error(
                "SMTP_FROM",
                format!("`{f}` is not an address (e.g. `Workspaces <notifications@example.com>`)"),
            ));
        }
        Ok(Self {
            allow_http_loopback,
            smtp_url,
            smtp_from,
        })
    }
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The destination accepted it (HTTP 2xx, or the SMTP server's positive reply).
    Delivered {
        /// HTTP status or SMTP reply code.
        status: Option<i32>,
    },
    /// It did not.
    Failed {
        /// HTTP status or SMTP reply code, when there was an answer.
        status: Option<i32>,
        /// What went wrong, one line.
        error: String,
        /// Retrying cannot help (the destination was removed, e-mail is not configured):
        /// the delivery fails now.
        permanent: bool,
    },
}

impl Outcome {
    /// A failure that retrying cannot fix.
    pub fn permanent(error: impl Into<String>) -> Self {
        Outcome::Failed {
            status: None,
            error: error.into(),
            permanent: true,
        }
    }
}

/// The clients of the channels, built once per process.
pub struct Notifier {
    /// The settings.
    pub config: NotificationConfig,
    http: reqwest::Client,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
}

impl Notifier {
    /// The clients for `config`.
    pub fn new(config: NotificationConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy()
            .user_agent(concat!(
                "workspaces-notifications/",
                env!("CARGO_PKG_VERSION")
            ))
            .dns_resolver(Arc::new(PublicResolver {
                allow_loopback: config.allow_http_loopback,
            }))
            .build()?;
        let smtp = match &config.smtp_url {
            Some(u) => Some(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(u)
                    .map_err(|_| anyhow::anyhow!("SMTP_URL is not an SMTP URL"))?
                    .timeout(Some(SMTP_TIMEOUT))
                    .build(),
            ),
            None => None,
        };
        let from = config
            .smtp_from
            .as_deref()
            .unwrap_or(DEFAULT_FROM)
            .parse()
            .map_err(|e| anyhow::anyhow!("SMTP_FROM: {e}"))?;
        Ok(Self {
            config,
            http,
            smtp,
            from,
        })
    }

    /// POSTs `body` (JSON) to `url` with `headers`. The response body is never read.
    pub async fn post_json(&self, url: &str, headers: &[(&str, String)], body: Vec<u8>) -> Outcome {
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                // Dropped unread: a receiver's answer is its status.
                drop(response);
                let code = Some(i32::from(status.as_u16()));
                if status.is_success() {
                    Outcome::Delivered { status: code }
                } else {
                    let why = if status.is_redirection() {
                        " (redirects are not followed)"
                    } else {
                        ""
                    };
                    Outcome::Failed {
                        status: code,
                        error: format!("HTTP {}{why}", status.as_u16()),
                        permanent: false,
                    }
                }
            }
            Err(e) => Outcome::Failed {
                status: None,
                error: describe(e),
                permanent: false,
            },
        }
    }

    /// Sends a plain-text e-mail to `to`.
    pub async fn send_email(&self, to: &str, subject: &str, text: String) -> Outcome {
        let Some(smtp) = &self.smtp else {
            return Outcome::permanent("e-mail is not configured on this server (SMTP_URL)");
        };
        // The rule recipients were stored by: a row from before it (or edited by hand) that
        // is not a bare address is never delivered.
        let Ok(to) = check_recipient("to", to) else {
            return Outcome::permanent(format!("`{}` is not a bare e-mail address", excerpt(to)));
        };
        let message = match Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(text)
        {
            Ok(m) => m,
            Err(e) => {
                return Outcome::permanent(one_line(&format!("cannot build the e-mail: {e}")));
            }
        };
        match tokio::time::timeout(SMTP_TIMEOUT * 3, smtp.send(message)).await {
            Err(_) => Outcome::Failed {
                status: None,
                error: format!(
                    "the SMTP server did not answer within {} s",
                    SMTP_TIMEOUT.as_secs() * 3
                ),
                permanent: false,
            },
            Ok(Ok(reply)) => Outcome::Delivered {
                status: Some(i32::from(u16::from(reply.code()))),
            },
            Ok(Err(e)) => Outcome::Failed {
                status: e.status().map(|c| i32::from(u16::from(c))),
                error: one_line(&format!("SMTP: {e}")),
                permanent: false,
            },
        }
    }
}

/// What went wrong with a request, without its URL (a Slack URL is a credential).
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        format!("timed out after {} s", HTTP_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        "request failed".to_string()
    };
    let e = e.without_url();
    let mut detail = None;
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail = Some(s.to_string());
        source = s.source();
    }
    one_line(&match detail {
        Some(d) if !e.is_timeout() => format!("{kind}: {d}"),
        _ => kind,
    })
}

/// Resolves names to the addresses [`reach`] allows: public ones, and loopback ones in
/// development.
struct PublicResolver {
    allow_loopback: bool,
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| reach(a.ip()).allowed(allow_loopback))
                .collect();
            if found.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Where an address (or a URL's host) leads, as [`reach`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// 127.0.0.0/8 or `::1` (or the name `localhost`): callable in development only.
    Loopback,
    /// Any other address that is not on the public internet: never callable.
    Internal,
    /// The public internet.
    Public,
}

impl Reach {
    /// Whether a destination that leads here may be called; `allow_loopback` is the
    /// development flag (`INTEGRATIONS_ALLOW_HTTP_LOOPBACK`).
    pub fn allowed(self, allow_loopback: bool) -> bool {
        match self {
            Reach::Public => true,
            Reach::Loopback => allow_loopback,
            Reach::Internal => false,
        }
    }
}

/// IPv4 networks that are not the public internet (IANA special-purpose registry).
const INTERNAL_V4: [(Ipv4Addr, u8); 15] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8), // "this network", 0.0.0.0 (unspecified) included
    (Ipv4Addr::new(10, 0, 0, 0), 8), // private
    (Ipv4Addr::new(100, 64, 0, 0), 10), // shared address space (CGNAT)
    (Ipv4Addr::new(127, 0, 0, 0), 8), // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16), // link-local (cloud metadata services)
    (Ipv4Addr::new(172, 16, 0, 0), 12), // private
    (Ipv4Addr::new(192, 0, 0, 0), 24), // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24), // documentation (TEST-NET-1)
    (Ipv4Addr::new(192, 88, 99, 0), 24), // 6to4 relay anycast (deprecated)
    (Ipv4Addr::new(192, 168, 0, 0), 16), // private
    (Ipv4Addr::new(198, 18, 0, 0), 15), // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation (TEST-NET-2)
    (Ipv4Addr::new(203, 0, 113, 0), 24), // documentation (TEST-NET-3)
    (Ipv4Addr::new(224, 0, 0, 0), 4), // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4), // reserved, 255.255.255.255 (broadcast) included
];

/// IPv6 networks whose embedded IPv4 address decides (the last 32 bits).
const EMBEDDING_V6: [(Ipv6Addr, u8); 2] = [
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96), // IPv4-mapped
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96), // NAT64 well-known prefix
];

/// The IPv6 global unicast space: every address outside it is refused.
const GLOBAL_UNICAST_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);

/// Networks inside [`GLOBAL_UNICAST_V6`] that are refused as a whole.
const INTERNAL_V6: [(Ipv6Addr, u8); 4] = [
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF assignments, Teredo 2001::/32 in it
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16), // 6to4
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation (RFC 9637)
];

fn in_v4(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net)
}

fn in_v6(ip: Ipv6Addr, (net, len): (Ipv6Addr, u8)) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net)
}

/// The one rule outbound destinations follow, for IP literals in URLs ([`check_url`]) and
/// for every address a name resolves to at delivery time (the HTTP client's resolver).
///
/// - [`Reach::Loopback`]: exactly 127.0.0.0/8 and `::1` (allowed only with the development
///   flag, see [`Reach::allowed`]).
/// - [`Reach::Internal`], never allowed: IPv4 unspecified and "this network" 0/8, private
///   10/8, 172.16/12 and 192.168/16, shared (CGNAT) 100.64/10, link-local 169.254/16,
///   192.0.0/24, documentation 192.0.2/24, 198.51.100/24 and 203.0.113/24, the 6to4 relay
///   192.88.99/24, benchmarking 198.18/15, multicast 224/4, reserved 240/4 (broadcast
///   included). IPv6: every address outside global unicast 2000::/3 (so `::`, the
///   IPv4-compatible ::/96, NAT64 local-use 64:ff9b:1::/48, discard 100::/64, unique-local
///   fc00::/7, link-local fe80::/10, site-local fec0::/10, multicast ff00::/8), and inside
///   it 2001::/23 (Teredo 2001::/32 included), documentation 2001:db8::/32 and 3fff::/20,
///   and 6to4 2002::/16.
/// - IPv6 forms that embed an IPv4 address: IPv4-mapped ::ffff:0:0/96 and NAT64
///   64:ff9b::/96 (what DNS64 answers on IPv6-only networks) are decided by the embedded
///   IPv4 address, and are [`Reach::Internal`] unless it is public (even when it is
///   loopback: the development exception covers only the plain forms). IPv4-compatible,
///   NAT64 local-use, 6to4 and Teredo ranges are refused as a whole, whatever they embed.
/// - Everything else is [`Reach::Public`].
pub fn reach(ip: IpAddr) -> Reach {
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Reach::Loopback
            } else if INTERNAL_V4.iter().any(|&n| in_v4(v4, n)) {
                Reach::Internal
            } else {
                Reach::Public
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                return Reach::Loopback;
            }
            if EMBEDDING_V6.iter().any(|&n| in_v6(v6, n)) {
                let [.., a, b, c, d] = v6.octets();
                return match reach(IpAddr::V4(Ipv4Addr::new(a, b, c, d))) {
                    Reach::Public => Reach::Public,
                    Reach::Loopback | Reach::Internal => Reach::Internal,
                };
            }
            if in_v6(v6, GLOBAL_UNICAST_V6) && !INTERNAL_V6.iter().any(|&n| in_v6(v6, n)) {
                Reach::Public
            } else {
                Reach::Internal
            }
        }
    }
}

/// Whether `ip` is an address on the public internet ([`reach`] says [`Reach::Public`]).
pub fn is_public(ip: IpAddr) -> bool {
    reach(ip) == Reach::Public
}

/// Where a URL's host leads: IP literals by [`reach`]; `localhost` names are loopback; any
/// other name is public here and has its addresses checked when it is resolved.
fn host_reach(url: &url::Url) -> Option<Reach> {
    Some(match url.host()? {
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d == "localhost" || d.ends_with(".localhost") {
                Reach::Loopback
            } else {
                Reach::Public
            }
        }
        url::Host::Ipv4(ip) => reach(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => reach(IpAddr::V6(ip)),
    })
}

/// Checks a destination URL given in input `field`: at most [`MAX_URL_BYTES`], `https://` to
/// a public host, or (only with `allow_http_loopback`) `http://` or `https://` to a loopback
/// host; no credentials. Returns it normalized. Refusals never quote more than an excerpt.
pub fn check_url(
    field: &'static str,
    raw: &str,
    allow_http_loopback: bool,
) -> DomainResult<String> {
    let bad = |m: String| Err(DomainError::bad_input(field, m));
    let raw = raw.trim();
    if raw.len() > MAX_URL_BYTES {
        return bad(format!(
            "{field} must be at most {MAX_URL_BYTES} bytes (got {})",
            raw.len()
        ));
    }
    if raw.is_empty() {
        return bad(format!("{field} must not be empty"));
    }
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad(format!(
            "{field} must not contain spaces or control characters"
        ));
    }
    let Ok(url) = url::Url::parse(raw) else {
        return bad(format!("`{}` is not a URL", excerpt(raw)));
    };
    if !url.username().is_empty() || url.password().is_some() {
        return bad(format!(
            "{field} must not hold credentials (receivers check the signature instead)"
        ));
    }
    let host = host_reach(&url);
    let web = matches!(url.scheme(), "https" | "http");
    // Plain http only to loopback hosts (development).
    let scheme_ok = url.scheme() == "https" || host == Some(Reach::Loopback);
    match host {
        Some(h) if web && scheme_ok && h.allowed(allow_http_loopback) => {}
        Some(Reach::Loopback | Reach::Internal) if web => {
            return bad(format!(
                "{field} must point to a public host: loopback and private addresses are refused{}",
                if allow_http_loopback {
                    " (loopback is allowed in development, private networks never)"
                } else {
                    ""
                }
            ));
        }
        _ => {
            return bad(format!(
                "{field} must be an https:// URL{}",
                if allow_http_loopback {
                    " (or http:// to 127.0.0.1, ::1 or localhost in development)"
                } else {
                    ""
                }
            ));
        }
    }
    let normalized = String::from(url);
    if normalized.len() > MAX_URL_BYTES {
        return bad(format!("{field} must be at most {MAX_URL_BYTES} bytes"));
    }
    Ok(normalized)
}

/// Longest e-mail recipient accepted, in bytes (RFC 5321's limit on a path, less its angle
/// brackets).
pub const MAX_ADDRESS_BYTES: usize = 254;

/// Reads one e-mail recipient given in input `field` exactly as delivery uses it: one bare
/// address (`name@example.com`) parsed by lettre's [`Address`], the type
/// [`Notifier::send_email`] addresses the message with (it calls this function again on what
/// was stored). Returns it normalized: its ASCII letters lower-cased and nothing else changed
/// (as `invitations::normalize_email` compares addresses: no Unicode folding). Surrounding whitespace is trimmed (pasted addresses carry it; the trimmed form is
/// what is stored). Anything else that is not a bare address is refused: a display name,
/// angle brackets, quotes (quoted local parts included), parentheses (comments), commas or
/// semicolons (lists, groups), whitespace or control characters inside, more than
/// [`MAX_ADDRESS_BYTES`], and whatever lettre does not parse. Refusals quote at most an
/// excerpt of the input.
pub fn check_recipient(field: &'static str, raw: &str) -> DomainResult<Address> {
    let raw = raw.trim();
    if raw.len() > MAX_ADDRESS_BYTES {
        return Err(DomainError::bad_input(
            field,
            format!(
                "{field}: an e-mail address has at most {MAX_ADDRESS_BYTES} bytes (got {})",
                raw.len()
            ),
        ));
    }
    let bad = || {
        DomainError::bad_input(
            field,
            format!(
                "`{}` is not an e-mail address: give one bare address such as name@example.com, without a display name, angle brackets, quotes or spaces",
                excerpt(raw)
            ),
        )
    };
    // lettre accepts some of these inside quoted local parts and domain literals, where a
    // reader of the stored address would take them for syntax around it.
    let not_bare = |c: char| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, '<' | '>' | ',' | ';' | '"' | '\\' | '(' | ')')
    };
    if raw.is_empty() || raw.chars().any(not_bare) {
        return Err(bad());
    }
    let address: Address = raw.parse().map_err(|_| bad())?;
    Address::new(
        address.user().to_ascii_lowercase(),
        address.domain().to_ascii_lowercase(),
    )
    .map_err(|_| bad())
}

/// How long an attempt took, in milliseconds (for the attempt log).
pub fn elapsed_ms(started: Instant) -> i32 {
    i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str, dev: bool) -> bool {
        check_url("url", url, dev).is_ok()
    }

    #[test]
    fn destinations_are_https_to_public_hosts_or_loopback_in_development() {
        assert!(ok("https://hooks.example.com/in", false));
        assert!(ok("https://93.184.216.34/in", false));
        assert!(!ok("http://hooks.example.com/in", false));
        assert!(!ok("http://hooks.example.com/in", true));
        assert!(!ok("http://127.0.0.1:8080/in", false));
        assert!(ok("http://127.0.0.1:8080/in", true));
        assert!(ok("http://[::1]:8080/in", true));
        assert!(ok("http://localhost:8080/in", true));
        assert!(!ok("https://localhost/in", false));
        assert!(!ok("https://10.0.0.5/in", false));
        assert!(!ok("https://10.0.0.5/in", true));
        assert!(!ok("https://169.254.169.254/latest", true));
        assert!(!ok("https://[fd00::1]/in", false));
        assert!(!ok("https://[::ffff:127.0.0.1]/in", false));
        assert!(!ok("http://192.168.1.1/in", true));
        assert!(!ok("ftp://example.com/x", true));
        assert!(!ok("https://user:pw@example.com/x", false));
        assert!(!ok("https://exa mple.com/x", false));
        assert!(!ok("https://example.com/\u{0}", false));
        assert!(!ok("not a url", false));
        assert!(!ok("", false));
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        let e = check_url("url", &long, false).expect_err("too long");
        assert!(e.to_string().len() < 200, "{e}");
    }

    /// Every form the rule names, with where it leads.
    const ADDRESSES: &[(&str, Reach)] = &[
        // Public.
        ("1.1.1.1", Reach::Public),
        ("8.8.8.8", Reach::Public),
        ("93.184.216.34", Reach::Public),
        ("100.63.255.255", Reach::Public),
        ("100.128.0.0", Reach::Public),
        ("172.32.0.1", Reach::Public),
        ("198.20.0.1", Reach::Public),
        ("2606:4700:4700::1111", Reach::Public),
        ("2606:2800:220:1:248:1893:25c8:1946", Reach::Public),
        ("2001:200::1", Reach::Public),
        ("::ffff:1.1.1.1", Reach::Public),
        ("64:ff9b::808:808", Reach::Public),
        // Loopback: allowed in development only.
        ("127.0.0.1", Reach::Loopback),
        ("127.255.255.254", Reach::Loopback),
        ("::1", Reach::Loopback),
        // Unspecified and "this network".
        ("0.0.0.0", Reach::Internal),
        ("0.1.2.3", Reach::Internal),
        ("::", Reach::Internal),
        // Private.
        ("10.1.2.3", Reach::Internal),
        ("172.16.0.1", Reach::Internal),
        ("172.31.255.255", Reach::Internal),
        ("192.168.0.1", Reach::Internal),
        // CGNAT.
        ("100.64.0.1", Reach::Internal),
        ("100.127.255.255", Reach::Internal),
        // Link-local.
        ("169.254.169.254", Reach::Internal),
        ("fe80::1", Reach::Internal),
        ("febf::1", Reach::Internal),
        ("fec0::1", Reach::Internal),
        // Unique-local.
        ("fc00::1", Reach::Internal),
        ("fd12:3456::1", Reach::Internal),
        // Multicast and broadcast.
        ("224.0.0.1", Reach::Internal),
        ("239.255.255.250", Reach::Internal),
        ("ff02::1", Reach::Internal),
        ("255.255.255.255", Reach::Internal),
        // Documentation and reserved.
        ("192.0.0.8", Reach::Internal),
        ("192.0.2.1", Reach::Internal),
        ("192.88.99.1", Reach::Internal),
        ("198.18.0.1", Reach::Internal),
        ("198.19.255.255", Reach::Internal),
        ("198.51.100.7", Reach::Internal),
        ("203.0.113.9", Reach::Internal),
        ("240.0.0.1", Reach::Internal),
        ("2001:db8::1", Reach::Internal),
        ("3fff::1", Reach::Internal),
        ("100::1", Reach::Internal),
        // IPv4-mapped: by the embedded address (loopback included: not the plain form).
        ("::ffff:127.0.0.1", Reach::Internal),
        ("::ffff:10.0.0.1", Reach::Internal),
        ("::ffff:169.254.169.254", Reach::Internal),
        // IPv4-compatible: refused whole.
        ("::127.0.0.1", Reach::Internal),
        ("::8.8.8.8", Reach::Internal),
        // NAT64 well-known prefix: by the embedded address.
        ("64:ff9b::7f00:1", Reach::Internal),
        ("64:ff9b::a00:1", Reach::Internal),
        ("64:ff9b::a9fe:a9fe", Reach::Internal),
        // NAT64 local-use: refused whole.
        ("64:ff9b:1::808:808", Reach::Internal),
        ("64:ff9b:1::7f00:1", Reach::Internal),
        // 6to4: refused whole.
        ("2002:7f00:1::", Reach::Internal),
        ("2002:808:808::1", Reach::Internal),
        // Teredo: refused whole.
        ("2001::1", Reach::Internal),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Reach::Internal),
    ];

    #[test]
    fn one_rule_decides_every_destination_address() {
        for &(text, expected) in ADDRESSES {
            let ip: IpAddr = text.parse().expect("ip");
            assert_eq!(reach(ip), expected, "{text}");
            assert_eq!(is_public(ip), expected == Reach::Public, "{text}");
            assert!(!Reach::Internal.allowed(true));
            assert_eq!(
                reach(ip).allowed(false),
                expected == Reach::Public,
                "{text}"
            );
            assert_eq!(
                reach(ip).allowed(true),
                expected != Reach::Internal,
                "{text}"
            );
        }
    }

    #[test]
    fn url_literals_follow_the_one_rule() {
        for &(text, expected) in ADDRESSES {
            let ip: IpAddr = text.parse().expect("ip");
            let host = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            for dev in [false, true] {
                let url = format!("https://{host}/in");
                assert_eq!(ok(&url, dev), expected.allowed(dev), "{url} (dev {dev})");
                let url = format!("http://{host}/in");
                assert_eq!(
                    ok(&url, dev),
                    dev && expected == Reach::Loopback,
                    "{url} (dev {dev})"
                );
            }
        }
        // The forms of the finding, as typed; other spellings of 127.0.0.1.
        for url in [
            "https://[::127.0.0.1]/",
            "https://[64:ff9b::7f00:1]/",
            "https://[2002:7f00:1::]/",
            "https://[::ffff:7f00:1]/",
            "https://[2001::7f00:1]/",
            "https://2130706433/",
            "https://0x7f.1/",
        ] {
            let loopback_spelling =
                url.starts_with("https://2130") || url.starts_with("https://0x");
            assert!(!ok(url, false), "{url}");
            assert_eq!(ok(url, true), loopback_spelling, "{url}");
        }
    }

    #[tokio::test]
    async fn resolved_addresses_follow_the_one_rule() {
        use reqwest::dns::Resolve as _;
        for &(text, expected) in ADDRESSES {
            for allow_loopback in [false, true] {
                let resolver = PublicResolver { allow_loopback };
                let name: reqwest::dns::Name = text.parse().expect("name");
                let got = resolver.resolve(name).await.is_ok();
                assert_eq!(
                    got,
                    expected.allowed(allow_loopback),
                    "{text} ({allow_loopback})"
                );
            }
        }
    }

    #[test]
    fn recipients_are_bare_addresses_as_lettre_reads_them() {
        let read = |raw: &str| check_recipient("emailRecipients", raw).map(|a| a.to_string());
        assert_eq!(
            read("Ops.Team+alerts@Example.COM").expect("bare"),
            "ops.team+alerts@example.com"
        );
        assert_eq!(read(" a@b.example\t").expect("trimmed"), "a@b.example");
        for refused in [
            "\"x\"<attacker@evil.example>",
            "\"x\"@evil.example",
            "\"a@good.example\"@evil.example",
            "Name <a@b.example>",
            "<a@b.example>",
            "a,b@x.example",
            "a@x.example, b@x.example",
            "a@x.example;b@x.example",
            "a@x.example (comment)",
            "a b@x.example",
            "a@x.example\nBcc: b@x.example",
            "a\u{7}@x.example",
            "a@[1,2]",
            "a@@x.example",
            "@x.example",
            "a@",
            "not an address",
            "",
            "   ",
        ] {
            let e = read(refused).expect_err(refused);
            let DomainError::BadInput { field, message } = &e else {
                panic!("{refused}: {e:?}");
            };
            assert_eq!(*field, "emailRecipients");
            assert!(!message.contains('\n'), "{message}");
        }
        let long = format!("{}@example.com", "a".repeat(10_000));
        let e = read(&long).expect_err("long");
        assert!(e.to_string().len() < 200, "{e}");
        let quoted = format!(
            "Someone Long Enough To Be Cut <{}@example.com>",
            "b".repeat(100)
        );
        let DomainError::BadInput { message, .. } = read(&quoted).expect_err("quoted") else {
            panic!("not bad input");
        };
        assert!(message.contains(&excerpt(&quoted)), "{message}");
        assert!(!message.contains(&"b".repeat(41)), "{message}");
    }
}
