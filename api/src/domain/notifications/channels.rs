//! The channels notifications go out on (webhooks and Slack over HTTP, e-mail over SMTP),
//! their configuration, and the rules destination URLs follow.
//!
//! Every outbound call is bounded: HTTP requests time out after [`HTTP_TIMEOUT`] (connecting
//! included), never follow redirects (a 3xx is a failed attempt), go through no proxy, and
//! their response bodies are never read; SMTP conversations time out after
//! [`SMTP_TIMEOUT`]. Host names are resolved to public addresses only (loopback too when
//! `INTEGRATIONS_ALLOW_HTTP_LOOPBACK` is on), so a destination whose name points inside the
//! network is refused at delivery time as IP literals are refused when it is configured.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

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
        let Ok(to) = to.parse::<Mailbox>() else {
            return Outcome::permanent(format!("`{}` is not an e-mail address", excerpt(to)));
        };
        let message = match Message::builder()
            .from(self.from.clone())
            .to(to)
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

/// Resolves names to public addresses only (and loopback ones in development).
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
                .filter(|a| is_public(a.ip()) || (allow_loopback && a.ip().is_loopback()))
                .collect();
            if found.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether `ip` is an address on the public internet (not loopback, private, link-local,
/// shared, documentation, multicast or unspecified).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

/// What a URL's host is.
#[derive(Debug, PartialEq, Eq)]
enum HostKind {
    /// 127.0.0.0/8, ::1, `localhost`.
    Loopback,
    /// Another address that is not on the public internet.
    Internal,
    /// A public address or a name.
    Public,
}

fn host_kind(url: &url::Url) -> Option<HostKind> {
    let kind = |ip: IpAddr| {
        if ip.is_loopback() {
            HostKind::Loopback
        } else if is_public(ip) {
            HostKind::Public
        } else {
            HostKind::Internal
        }
    };
    Some(match url.host()? {
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d == "localhost" || d.ends_with(".localhost") {
                HostKind::Loopback
            } else {
                HostKind::Public
            }
        }
        url::Host::Ipv4(ip) => kind(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => kind(IpAddr::V6(ip)),
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
    let host = host_kind(&url);
    let loopback_ok = allow_http_loopback && host == Some(HostKind::Loopback);
    match (url.scheme(), host) {
        ("https", Some(HostKind::Public)) => {}
        ("https" | "http", Some(HostKind::Loopback)) if loopback_ok => {}
        ("https" | "http", Some(HostKind::Loopback | HostKind::Internal)) => {
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

    #[test]
    fn public_addresses_are_told_apart() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fc00::1",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = internal.parse().expect("ip");
            assert!(!is_public(ip), "{internal}");
        }
        for public in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"] {
            let ip: IpAddr = public.parse().expect("ip");
            assert!(is_public(ip), "{public}");
        }
    }
}
