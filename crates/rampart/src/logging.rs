//! Logging setup: `tracing` to stderr, text or JSON.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Installs the global subscriber. `-v` and `-q` shift the configured
/// level; one-shot commands (`quieter`) log a level less than `serve`, so
/// that their output is what they print, not what they did.
pub fn init(config: &LogConfig, verbose: u8, quiet: u8, quieter: bool) {
    let shift = i32::from(verbose) - i32::from(quiet) - i32::from(quieter);
    let filter = shifted(&config.level, shift);
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A level moved `by` steps (a full filter expression is kept as it is
/// unless its base is a plain level).
fn shifted(level: &str, by: i32) -> String {
    let (base, rest) = level.split_once(',').unwrap_or((level, ""));
    let Some(i) = LEVELS
        .iter()
        .position(|l| l.eq_ignore_ascii_case(base.trim()))
    else {
        return level.to_owned();
    };
    let j = (i as i32 + by).clamp(0, LEVELS.len() as i32 - 1) as usize;
    if by == 0 && rest.is_empty() {
        return LEVELS[i].to_owned();
    }
    if rest.is_empty() {
        LEVELS[j].to_owned()
    } else {
        format!("{},{rest}", LEVELS[j])
    }
}

#[cfg(test)]
mod tests {
    use super::shifted;

    #[test]
    fn verbosity_shifts_the_base_level() {
        assert_eq!(shifted("info", 1), "debug");
        assert_eq!(shifted("info", -2), "error");
        assert_eq!(shifted("info", -9), "error");
        assert_eq!(
            shifted("warn,rampart_store=debug", 1),
            "info,rampart_store=debug"
        );
        assert_eq!(shifted("rampart=debug", 1), "rampart=debug");
    }
}
