//! Process figures from Linux `/proc`: resident memory and CPU time.

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`), 100 on
/// every mainstream Linux architecture.
const USER_HZ: f64 = 100.0;

/// Resident set size (`VmRSS`) of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// User plus system CPU time a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its
    // closing parenthesis are space-separated. utime and stime are fields
    // 14 and 15 (proc(5)), i.e. the 12th and 13th after the name.
    let after = stat.rsplit_once(')')?.1;
    let mut fields = after.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).is_some_and(|kib| kib > 0));
        assert!(cpu_seconds(pid).is_some_and(|s| s >= 0.0));
    }
}
