//! Printing command results: human text, or JSON with `--json`.

use serde::Serialize;

/// Prints `value` as pretty JSON on standard output. A reader that went
/// away (`rampart ... --json | head`) ends the output quietly instead of
/// panicking as `println!` would.
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(value)?;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to standard output"))
        }
        _ => Ok(()),
    }
}

/// Writes one line of human output to standard output. When the reader
/// went away (`rampart device list | head`), the process ends quietly with
/// status 0, as `println!` would have panicked instead; any other write
/// failure ends it with status 1 and the reason. Used through [`say!`].
pub fn line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` for command output that a closed pipe does not turn into a
/// panic (see [`line`]).
macro_rules! say {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
pub(crate) use say;

/// RFC 3339 for human output.
pub fn when(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// An owner for human output: `user ann`, `group lab`.
pub fn owner(o: &rampart_store::Owner) -> String {
    match o {
        rampart_store::Owner::User(u) => format!("user {u}"),
        rampart_store::Owner::Group(g) => format!("group {g}"),
    }
}
