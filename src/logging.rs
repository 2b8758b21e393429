//! Logging: tracing to stderr, text or one JSON object a line, filtered by
//! `RUST_LOG` (default `info`).
//!
//! The HTTP and TLS libraries are capped at `info` whatever `RUST_LOG`
//! says: at their debug and trace levels they may print headers, and the
//! login answer's `Set-Cookie` header holds the token.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Libraries never logged above `info`.
const CAPPED: [&str; 7] = [
    "hyper",
    "hyper_util",
    "hyper_rustls",
    "reqwest",
    "rustls",
    "h2",
    "notify",
];

/// `RUST_LOG` as `target=level` directives and a bare default level
/// (`info`, `voipbin_tokend=debug,warn`); unreadable: `info`. The
/// libraries in [`CAPPED`] are held at `info` or quieter whatever it says.
/// (tracing-subscriber's `Targets`: the same syntax as `EnvFilter` without
/// its span-field filters, and without the regex engine they need.)
pub fn filter(rust_log: Option<&str>) -> Targets {
    let asked: Targets = rust_log
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    // As EnvFilter: without a bare level, targets not named are off.
    let mut filter = match asked.default_level() {
        Some(level) => Targets::new().with_default(level),
        None => Targets::new(),
    };
    for (target, level) in asked.iter() {
        if !CAPPED
            .iter()
            .any(|c| target == *c || target.starts_with(&format!("{c}::")))
        {
            filter = filter.with_target(target, level);
        }
    }
    for target in CAPPED {
        let level = asked
            .iter()
            .find(|(t, _)| t == &target)
            .map_or(LevelFilter::INFO, |(_, l)| l);
        filter = filter.with_target(target, level.min(LevelFilter::INFO));
    }
    filter
}

pub fn init(format: LogFormat) {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    // The fmt builder's own level (INFO unless told) would drop what the
    // filter lets through: it is opened fully, and `filter` decides.
    let builder = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_writer(std::io::stderr)
        .with_target(false);
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish()
            .with(filter)
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .finish()
            .with(filter)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use tracing::level_filters::LevelFilter;

    #[test]
    fn rust_log_is_read_and_the_http_libraries_stay_at_info() {
        let f = super::filter(Some("trace"));
        assert!(f.would_enable("voipbin_tokend", &tracing::Level::TRACE));
        assert!(!f.would_enable("hyper::proto", &tracing::Level::DEBUG));
        assert!(f.would_enable("hyper::proto", &tracing::Level::INFO));
        let f = super::filter(Some("voipbin_tokend=debug,warn,hyper=trace,reqwest=error"));
        assert!(f.would_enable("voipbin_tokend::daemon", &tracing::Level::DEBUG));
        assert!(!f.would_enable("other", &tracing::Level::INFO));
        assert!(!f.would_enable("hyper", &tracing::Level::DEBUG));
        assert!(!f.would_enable("reqwest", &tracing::Level::WARN));
        let f = super::filter(Some("voipbin_tokend=debug"));
        assert!(f.would_enable("voipbin_tokend::credential", &tracing::Level::DEBUG));
        assert!(!f.would_enable("tokio", &tracing::Level::ERROR));
        let f = super::filter(Some("not a filter ==="));
        assert_eq!(f.default_level(), Some(LevelFilter::INFO));
        assert_eq!(super::filter(None).default_level(), Some(LevelFilter::INFO));
    }
}
