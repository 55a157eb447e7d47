//! The progress line: what the fleet did so far, in one line.

use std::time::Duration;

use crate::stats::Counts;

/// One line: devices connected / enrolled, readings sent, acknowledged,
/// buffered, dropped, read failures and reconnects.
pub fn line(c: &Counts, elapsed: Duration) -> String {
    format!(
        "{:>6.1}s  connected {}/{}  enrolled {}  sent {}  acked {}  buffered {}  dropped {}  read failures {}  reconnects {}",
        elapsed.as_secs_f64(),
        c.connected,
        c.devices,
        c.enrolled,
        c.sent,
        c.acknowledged,
        c.buffered,
        c.dropped,
        c.read_failures,
        c.reconnects(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_every_figure() {
        let c = Counts {
            devices: 200,
            enrolled: 200,
            connected: 198,
            sent: 2400,
            acknowledged: 2380,
            buffered: 20,
            connects: 230,
            ..Counts::default()
        };
        let l = line(&c, Duration::from_millis(12_345));
        assert_eq!(
            l,
            "  12.3s  connected 198/200  enrolled 200  sent 2400  acked 2380  buffered 20  dropped 0  read failures 0  reconnects 30"
        );
    }
}
