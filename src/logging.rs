//! The server's log output: `tracing` events formatted to stderr, filtered by `HEARTH_LOG`
//! (`EnvFilter` syntax, default `info,actix_server=warn`).
//!
//! actix-http logs a malformed request or a connection the client broke (`stream error: ...`)
//! at ERROR, from its HTTP/1 and HTTP/2 dispatchers. Those are the client's doing, already
//! answered (400) or moot, and nothing an operator must act on: they are demoted to DEBUG,
//! shown only when `HEARTH_LOG` enables debug for their target, and printed as DEBUG.

use std::fmt;

use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt, Targets};
use tracing_subscriber::fmt::format::{DefaultFields, Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The default filter when `HEARTH_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,actix_server=warn";

/// Targets whose ERROR events are demoted to DEBUG (see the module documentation).
const DEMOTED_TARGETS: &[&str] = &["actix_http::h1::dispatcher", "actix_http::h2::dispatcher"];

fn is_demoted(meta: &Metadata<'_>) -> bool {
    *meta.level() == Level::ERROR && DEMOTED_TARGETS.contains(&meta.target())
}

/// Whether `spec` enables DEBUG for the demoted targets (read as a list of `target=level`
/// directives; a spec with span or field filters shows none of them).
fn debug_enabled_for_demoted(spec: &str) -> bool {
    spec.parse::<Targets>().is_ok_and(|t| DEMOTED_TARGETS.iter().any(|target| t.would_enable(target, &Level::DEBUG)))
}

/// Formats demoted events as DEBUG, everything else as `tracing_subscriber`'s default format.
struct Demoting {
    inner: Format,
}

impl<S, N> FormatEvent<S, N> for Demoting
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        if !is_demoted(meta) {
            return self.inner.format_event(ctx, writer, event);
        }
        let now =
            time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        write!(writer, "{now} DEBUG {}: ", meta.target())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The formatting layer for `spec`, writing to `writer`.
pub fn layer<S, W>(spec: &str, writer: W, ansi: bool) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let show_demoted = debug_enabled_for_demoted(spec);
    let keep = filter_fn(move |meta| !is_demoted(meta) || show_demoted);
    tracing_subscriber::fmt::layer()
        .fmt_fields(DefaultFields::new())
        .event_format(Demoting { inner: Format::default().with_ansi(ansi) })
        .with_ansi(ansi)
        .with_writer(writer)
        .with_filter(EnvFilter::new(spec).and(keep))
}

/// Installs the global subscriber: `HEARTH_LOG` (or the default) to stderr.
pub fn init() {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let spec = std::env::var("HEARTH_LOG").unwrap_or_else(|_| DEFAULT_FILTER.to_owned());
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::registry().with(layer(&spec, std::io::stderr, ansi)).try_init();
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::ErrorKind::Other)?.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(spec: &str) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::registry().with(layer(spec, move || writer.clone(), false));
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "actix_http::h1::dispatcher", "stream error: request parse error: invalid header");
            tracing::error!(target: "hearth::http", "request failed");
            tracing::info!(target: "hearth::http", "request");
        });
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn malformed_request_errors_of_actix_are_hidden_at_info() {
        let out = logged(DEFAULT_FILTER);
        assert!(!out.contains("stream error"), "{out}");
        assert!(out.contains("ERROR hearth::http: request failed"), "{out}");
        assert!(out.contains("INFO hearth::http: request"), "{out}");
    }

    #[test]
    fn malformed_request_errors_of_actix_show_as_debug_when_debug_is_on() {
        for spec in ["debug", "info,actix_http=debug", "info,actix_http::h1::dispatcher=trace"] {
            let out = logged(spec);
            assert!(out.contains("DEBUG actix_http::h1::dispatcher: stream error"), "{spec}: {out}");
            assert!(!out.contains("ERROR actix_http"), "{spec}: {out}");
            assert!(out.contains("ERROR hearth::http: request failed"), "{spec}: {out}");
        }
    }
}
