//! `[server]`: how the public listener bounds its connections, answers health checks and
//! compresses responses.

use std::time::Duration;

use super::raw::RawServer;

/// More request threads than this is a mistake, not a setting.
const MAX_WORKERS: u64 = 1024;

/// A longer spin is a busy loop, not a wait for the next packet.
const MAX_IDLE_SPIN: Duration = Duration::from_millis(10);

/// The public listener's settings, read once when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Connections served at once; a connection beyond it is answered 503 and closed.
    pub max_connections: usize,
    /// How long an HTTP/1 client may take to send a request's headers before the connection is
    /// closed (slow-header clients would otherwise hold a connection slot for ever).
    pub header_read_timeout: Duration,
    /// The largest total of request header names and values; above it, 431.
    pub max_header_bytes: usize,
    /// Streams one HTTP/2 connection may have open; beyond it the client gets REFUSED_STREAM.
    pub http2_max_concurrent_streams: u32,
    /// Whether responses are compressed when the client's Accept-Encoding allows it.
    pub compression: bool,
    /// Responses smaller than this are sent as they are.
    pub compression_min_bytes: u64,
    /// The liveness path, answered before routing; None when disabled.
    pub health_path: Option<String>,
    /// The readiness path, answered before routing; None when disabled.
    pub ready_path: Option<String>,
    /// Request worker threads, each a single-threaded runtime serving whole connections; 0
    /// serves connections on the process's shared multi-threaded runtime instead.
    pub workers: usize,
    /// How long a worker keeps polling its sockets after a request starts or ends before it
    /// sleeps; zero never spins. Trades idle CPU for the wake-up latency of a sleeping thread.
    pub idle_spin: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 << 10,
            http2_max_concurrent_streams: 256,
            compression: true,
            compression_min_bytes: 1024,
            health_path: Some("/healthz".to_owned()),
            ready_path: Some("/readyz".to_owned()),
            workers: crate::server::workers::default_count(),
            idle_spin: Duration::from_micros(100),
        }
    }
}

impl ServerConfig {
    /// Checks `[server]`, pushing one line per problem; the default stands in for a bad key.
    pub(super) fn from_raw(raw: &RawServer, problems: &mut Vec<String>) -> ServerConfig {
        let defaults = ServerConfig::default();
        let positive = |value: Option<u64>, default: usize, key: &str, problems: &mut Vec<_>| {
            super::size(value, default, &format!("server.{key}"), problems)
        };
        let header_read_timeout = match raw.header_read_timeout.as_deref() {
            None => defaults.header_read_timeout,
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) if !d.is_zero() => d,
                _ => {
                    problems.push(format!(
                        "server.header_read_timeout: {text:?} is not a duration like 10s"
                    ));
                    defaults.header_read_timeout
                }
            },
        };
        let streams = positive(
            raw.http2_max_concurrent_streams,
            defaults.http2_max_concurrent_streams as usize,
            "http2_max_concurrent_streams",
            problems,
        );
        let http2_max_concurrent_streams = u32::try_from(streams).unwrap_or_else(|_| {
            problems.push(format!(
                "server.http2_max_concurrent_streams: {streams} is above {}",
                u32::MAX
            ));
            defaults.http2_max_concurrent_streams
        });
        // hyper keeps a whole header block in memory, and an HTTP/2 limit is a u32: a bound
        // past 1 GiB is a mistake, not a setting.
        let mut max_header_bytes = positive(
            raw.max_header_bytes,
            defaults.max_header_bytes,
            "max_header_bytes",
            problems,
        );
        if max_header_bytes > 1 << 30 {
            problems.push("server.max_header_bytes: must be at most 1073741824".to_owned());
            max_header_bytes = defaults.max_header_bytes;
        }
        let idle_spin = match raw.idle_spin.as_deref().map(parse_idle_spin) {
            None => defaults.idle_spin,
            Some(Ok(spin)) => spin,
            Some(Err(e)) => {
                problems.push(format!("server.idle_spin: {e}"));
                defaults.idle_spin
            }
        };
        ServerConfig {
            max_connections: positive(
                raw.max_connections,
                defaults.max_connections,
                "max_connections",
                problems,
            ),
            header_read_timeout,
            max_header_bytes,
            http2_max_concurrent_streams,
            compression: raw.compression.unwrap_or(defaults.compression),
            compression_min_bytes: raw
                .compression_min_bytes
                .unwrap_or(defaults.compression_min_bytes),
            health_path: endpoint_path(
                raw.health_path.as_deref(),
                defaults.health_path,
                "health_path",
                problems,
            ),
            ready_path: endpoint_path(
                raw.ready_path.as_deref(),
                defaults.ready_path,
                "ready_path",
                problems,
            ),
            workers: match raw.workers {
                None => defaults.workers,
                Some(n) if n <= MAX_WORKERS => n as usize,
                Some(n) => {
                    problems.push(format!(
                        "server.workers: {n} is more than the {MAX_WORKERS} allowed"
                    ));
                    defaults.workers
                }
            },
            idle_spin,
        }
    }
}

/// Reads `server.idle_spin` (or `--idle-spin`): a duration from 0s to 10ms.
pub fn parse_idle_spin(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(spin) if spin <= MAX_IDLE_SPIN => Ok(spin),
        _ => Err(format!(
            "{text:?} is not a duration from 0s to 10ms, like 100us"
        )),
    }
}

/// `""` disables the endpoint; anything else must be an absolute path.
fn endpoint_path(
    text: Option<&str>,
    default: Option<String>,
    key: &str,
    problems: &mut Vec<String>,
) -> Option<String> {
    match text {
        None => default,
        Some("") => None,
        Some(path) if path.starts_with('/') && !path.contains(['?', '#', ' ']) => {
            Some(path.to_owned())
        }
        Some(path) => {
            problems.push(format!(
                "server.{key}: {path:?} is not a path like /healthz (or \"\" to disable it)"
            ));
            default
        }
    }
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use std::path::Path;

    use crate::config::Config;

    use super::*;

    #[test]
    fn defaults() {
        assert_eq!(Config::default().server, ServerConfig::default());
        let server = ServerConfig::default();
        assert_eq!(server.max_connections, 10_000);
        assert_eq!(server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(server.max_header_bytes, 16384);
        assert_eq!(server.http2_max_concurrent_streams, 256);
        assert!(server.compression);
        assert_eq!(server.compression_min_bytes, 1024);
        assert_eq!(server.health_path.as_deref(), Some("/healthz"));
        assert_eq!(server.ready_path.as_deref(), Some("/readyz"));
        assert_eq!(server.idle_spin, Duration::from_micros(100));
    }

    #[test]
    fn every_key_is_read() {
        let config = Config::from_toml(
            r#"
            [server]
            max_connections = 5
            header_read_timeout = "250ms"
            max_header_bytes = 100
            http2_max_concurrent_streams = 2
            compression = false
            compression_min_bytes = 0
            health_path = "/live"
            ready_path = ""
            workers = 3
            idle_spin = "0s"
            "#,
            Path::new("."),
        )
        .expect("valid");
        assert_eq!(
            config.server,
            ServerConfig {
                max_connections: 5,
                header_read_timeout: Duration::from_millis(250),
                max_header_bytes: 100,
                http2_max_concurrent_streams: 2,
                compression: false,
                compression_min_bytes: 0,
                health_path: Some("/live".to_owned()),
                ready_path: None,
                workers: 3,
                idle_spin: Duration::ZERO,
            }
        );
    }

    #[test]
    fn bad_values_are_each_reported() {
        let err = Config::from_toml(
            r#"
            [server]
            max_connections = 0
            header_read_timeout = "soon"
            max_header_bytes = 0
            http2_max_concurrent_streams = 5000000000
            health_path = "healthz"
            ready_path = "/ready?x"
            workers = 5000
            idle_spin = "1s"
            "#,
            Path::new("."),
        )
        .expect_err("invalid");
        let text = err.to_string();
        for key in [
            "server.max_connections",
            "server.header_read_timeout",
            "server.max_header_bytes",
            "server.http2_max_concurrent_streams",
            "server.health_path",
            "server.ready_path",
            "server.workers",
            "server.idle_spin",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(Config::from_toml("[server]\nmax_conns = 1\n", Path::new(".")).is_err());
    }
}
