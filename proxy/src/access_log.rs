//! The access log: one line per request (or per tunnel, written when it closes), as JSON
//! or in the combined format.

use std::fs::OpenOptions;
use std::io::{LineWriter, Write};
use std::net::IpAddr;

use parking_lot::Mutex;
use serde::Serialize;

use crate::config::{AccessLogConfig, AccessLogFormat};

/// One finished request or tunnel.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub ts: String,
    pub client: Option<IpAddr>,
    pub method: &'a str,
    pub path: &'a str,
    pub version: &'a str,
    pub host: Option<&'a str>,
    /// 0 when nothing was answered; logged as [`CLIENT_CLOSED`].
    #[serde(serialize_with = "serialize_status")]
    pub status: u16,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    #[serde(serialize_with = "serialize_ms")]
    pub duration_ms: f64,
    pub upstream: Option<&'a str>,
    pub backend: Option<String>,
    /// The backends tried before `backend`, in order, when the request was retried (its
    /// connection failed, or a kept-alive one had just been closed): nginx's
    /// `$upstream_addr` lists them all. JSON only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tried: Option<String>,
    pub tunnel: bool,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// The request's `X-Request-Id`, with `[server] request_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    /// The subject of the client's verified certificate (mutual TLS), RFC 4514; JSON only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<&'a str>,
}

/// nginx's 499 "client closed request": the status logged for a request whose client went
/// away before any answer was sent. Log parsers (GoAccess, fail2ban, dashboards that bucket
/// by class) read the status as an HTTP code, and a 0 is none.
pub const CLIENT_CLOSED: u16 = 499;

fn logged_status(status: u16) -> u16 {
    if status == 0 {
        CLIENT_CLOSED
    } else {
        status
    }
}

fn serialize_status<S: serde::Serializer>(status: &u16, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(logged_status(*status))
}

/// Milliseconds to the microsecond, as nginx's `$request_time` is to the millisecond: an
/// elapsed time in float milliseconds prints as `2.9687099999999997`, seventeen digits of
/// noise in every line.
fn serialize_ms<S: serde::Serializer>(ms: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((ms * 1e3).round() / 1e3)
}

/// One error line a minute at most for access log lines that could not be written.
static WRITE_FAILURES: crate::logging::Throttle = crate::logging::Throttle::new();

pub struct AccessLog {
    format: AccessLogFormat,
    out: Option<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("enabled", &self.out.is_some())
            .finish()
    }
}

impl AccessLog {
    /// Opens (creating it if needed) the configured file, or stdout. Called at start and on
    /// every reload, so a reload after renaming the file (log rotation) starts a new one.
    pub fn open(cfg: &AccessLogConfig) -> std::io::Result<Self> {
        let out: Option<Mutex<Box<dyn Write + Send>>> = if !cfg.enabled {
            None
        } else {
            match &cfg.path {
                None => Some(Mutex::new(Box::new(LineWriter::new(std::io::stdout())))),
                Some(p) => {
                    let f = OpenOptions::new().create(true).append(true).open(p)?;
                    Some(Mutex::new(Box::new(LineWriter::new(f))))
                }
            }
        };
        Ok(Self {
            format: cfg.format,
            out,
        })
    }

    pub fn enabled(&self) -> bool {
        self.out.is_some()
    }

    pub fn write(&self, e: &Entry) {
        let Some(out) = &self.out else { return };
        let mut line = match self.format {
            AccessLogFormat::Json => serde_json::to_string(e).unwrap_or_default(),
            AccessLogFormat::Combined => format!(
                "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\"",
                e.client
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                chrono::Utc::now().format("%d/%b/%Y:%H:%M:%S %z"),
                Escaped(e.method),
                Escaped(e.path),
                Escaped(e.version),
                logged_status(e.status),
                e.bytes_sent,
                Escaped(e.referer.unwrap_or("-")),
                Escaped(e.user_agent.unwrap_or("-")),
            ),
        };
        // After the combined fields, as nginx's usual `log_format ... "$request_id"`, so
        // that parsers of the combined format read the rest as before.
        if let (AccessLogFormat::Combined, Some(id)) = (self.format, e.request_id) {
            line.push_str(" \"");
            line.push_str(id);
            line.push('"');
        }
        let mut w = out.lock();
        // A full disk must not take the proxy down: the line is dropped. But not silently,
        // as nginx logs its failed access log writes: an operator who finds a gap in the
        // log must be able to tell it from a quiet hour.
        if let Err(e) = writeln!(w, "{line}") {
            drop(w);
            if WRITE_FAILURES.allow() {
                tracing::error!(
                    "cannot write the access log: {e}; its lines are dropped until writes succeed \
                     (further failures within a minute are not logged)"
                );
            }
        }
    }

    pub fn now() -> String {
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }
}

/// A client-supplied field of a combined line, escaped as nginx escapes its log variables:
/// `"`, `\` and every byte outside printable ASCII become `\xHH`. Unescaped, a quote in a
/// User-Agent (or an HTTP/2 path) ends the field early and lets the client write fields of
/// its own into the line, which log parsers and fail2ban-style tools then believe.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for &b in self.0.as_bytes() {
            if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
                write!(f, "\\x{b:02X}")?;
            } else {
                f.write_char(char::from(b))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{AccessLog, Entry, Escaped};
    use crate::config::{AccessLogConfig, AccessLogFormat};

    fn entry(request_id: Option<&str>) -> Entry<'_> {
        Entry {
            ts: AccessLog::now(),
            client: None,
            method: "GET",
            path: "/",
            version: "HTTP/1.1",
            host: None,
            status: 200,
            bytes_sent: 0,
            bytes_received: 0,
            duration_ms: 0.0,
            upstream: None,
            backend: None,
            tunnel: false,
            referer: None,
            user_agent: None,
            request_id,
            client_cert: None,
            tried: None,
        }
    }

    /// The lines an access log in `format` (a file in `dir`) writes for `entries`.
    fn written(dir: &std::path::Path, format: AccessLogFormat, entries: &[Entry]) -> Vec<String> {
        let path = dir.join(format!("{format:?}.log"));
        let log = AccessLog::open(&AccessLogConfig {
            enabled: true,
            format,
            path: Some(path.clone()),
        })
        .unwrap();
        for e in entries {
            log.write(e);
        }
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_request_id_ends_a_combined_line_and_is_a_json_field() {
        let dir = tempfile::tempdir().unwrap();
        for format in [AccessLogFormat::Combined, AccessLogFormat::Json] {
            let lines = written(dir.path(), format, &[entry(Some("0123abcd")), entry(None)]);
            match format {
                AccessLogFormat::Combined => {
                    assert!(
                        lines[0].ends_with("\"-\" \"-\" \"0123abcd\""),
                        "{}",
                        lines[0]
                    );
                    assert!(lines[1].ends_with("\"-\" \"-\""), "{}", lines[1]);
                }
                AccessLogFormat::Json => {
                    assert!(
                        lines[0].contains("\"request_id\":\"0123abcd\""),
                        "{}",
                        lines[0]
                    );
                    assert!(!lines[1].contains("request_id"), "{}", lines[1]);
                }
            }
        }
    }

    #[test]
    fn a_client_certificate_subject_is_a_json_field_only() {
        let dir = tempfile::tempdir().unwrap();
        for format in [AccessLogFormat::Combined, AccessLogFormat::Json] {
            let with_cert = Entry {
                client_cert: Some("CN=alice,O=Acme"),
                ..entry(None)
            };
            let lines = written(dir.path(), format, &[with_cert, entry(None)]);
            let json = format == AccessLogFormat::Json;
            assert_eq!(
                lines[0].contains("\"client_cert\":\"CN=alice,O=Acme\""),
                json,
                "{}",
                lines[0]
            );
            assert!(!lines[1].contains("client_cert"), "{}", lines[1]);
        }
    }

    #[test]
    fn a_request_its_client_left_unanswered_is_logged_as_499_as_nginx_does() {
        let dir = tempfile::tempdir().unwrap();
        let left = Entry {
            status: 0,
            ..entry(None)
        };
        let combined = written(dir.path(), AccessLogFormat::Combined, &[left]);
        assert!(combined[0].contains("\" 499 0 \""), "{}", combined[0]);
        let left = Entry {
            status: 0,
            ..entry(None)
        };
        let json = written(dir.path(), AccessLogFormat::Json, &[left]);
        assert!(json[0].contains("\"status\":499,"), "{}", json[0]);
    }

    #[test]
    fn a_json_duration_is_written_to_the_microsecond() {
        let dir = tempfile::tempdir().unwrap();
        let timed = Entry {
            duration_ms: 2.968_709_999_999_999_7,
            ..entry(None)
        };
        let json = written(dir.path(), AccessLogFormat::Json, &[timed]);
        assert!(json[0].contains("\"duration_ms\":2.969,"), "{}", json[0]);
    }

    #[test]
    fn combined_fields_escape_quotes_backslashes_and_non_printables() {
        assert_eq!(Escaped("curl/8.0").to_string(), "curl/8.0");
        assert_eq!(
            Escaped("a\" 200 0 \"x\\y").to_string(),
            "a\\x22 200 0 \\x22x\\x5Cy"
        );
        assert_eq!(Escaped("t\tü\u{7f}").to_string(), "t\\x09\\xC3\\xBC\\x7F");
    }
}
