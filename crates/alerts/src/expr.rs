//! Rule expressions: the text an operator writes after `--expr`, parsed
//! into a [`Condition`].
//!
//! ```text
//! threshold   METRIC (> | >= | < | <=) NUMBER [for DURATION] [hysteresis NUMBER]
//!             temperature > 30 for 5m hysteresis 1     humidity < 20
//! absence     offline for DURATION                     no-telemetry for DURATION
//! certificate cert-expires within DURATION             (default 30d)
//! security    handshake-failures | acl-denials | rejected-payloads | sequence-conflicts
//!             [> N in DURATION]                        (default > 0 in 10m)
//! rollout     rollout paused | rollout aborted | rollout halted (either)
//! ```
//!
//! Durations are humantime spans (`30s`, `5m`, `1h`, `30d`). Words are
//! separated by spaces; a threshold's operator may touch its operands
//! (`temperature>30`). Every refusal says which word was wrong and what was
//! expected there.

use std::fmt;
use std::time::Duration;

/// Longest expression accepted, in bytes.
pub const MAX_EXPR_LEN: usize = 256;
/// Longest metric name (the pipeline's limit).
pub const MAX_METRIC_LEN: usize = 64;
/// Default look-ahead of `cert-expires`.
pub const DEFAULT_CERT_WINDOW: Duration = Duration::from_secs(30 * 86_400);
/// Default window of the security counters.
pub const DEFAULT_EVENT_WINDOW: Duration = Duration::from_secs(600);
/// Longest `for`/`within`/`in` duration: a year.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

/// A comparison of a threshold rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `>`
    Above,
    /// `>=`
    AtLeast,
    /// `<`
    Below,
    /// `<=`
    AtMost,
}

impl Comparison {
    /// Whether `value` meets the comparison against `limit`.
    pub fn holds(self, value: f64, limit: f64) -> bool {
        match self {
            Comparison::Above => value > limit,
            Comparison::AtLeast => value >= limit,
            Comparison::Below => value < limit,
            Comparison::AtMost => value <= limit,
        }
    }

    /// Whether a firing alert on `limit` with `hysteresis` has cleared:
    /// the value must come back past the limit by the hysteresis.
    pub fn cleared(self, value: f64, limit: f64, hysteresis: f64) -> bool {
        match self {
            Comparison::Above | Comparison::AtLeast if hysteresis > 0.0 => {
                value <= limit - hysteresis
            }
            Comparison::Below | Comparison::AtMost if hysteresis > 0.0 => {
                value >= limit + hysteresis
            }
            _ => !self.holds(value, limit),
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Comparison::Above => ">",
            Comparison::AtLeast => ">=",
            Comparison::Below => "<",
            Comparison::AtMost => "<=",
        }
    }
}

/// A security event a counting rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityEvent {
    /// Failed TLS handshakes, counted per source address.
    HandshakeFailure,
    /// Publishes or subscriptions the ACL refused, per device.
    AclDenial,
    /// Payloads the pipeline refused, per device.
    RejectedPayload,
    /// Sequence-number conflicts (same seq, other payload), per device.
    SequenceConflict,
}

impl SecurityEvent {
    /// Every event, in expression-word order.
    pub const ALL: [SecurityEvent; 4] = [
        SecurityEvent::HandshakeFailure,
        SecurityEvent::AclDenial,
        SecurityEvent::RejectedPayload,
        SecurityEvent::SequenceConflict,
    ];

    /// The expression word.
    pub fn word(self) -> &'static str {
        match self {
            SecurityEvent::HandshakeFailure => "handshake-failures",
            SecurityEvent::AclDenial => "acl-denials",
            SecurityEvent::RejectedPayload => "rejected-payloads",
            SecurityEvent::SequenceConflict => "sequence-conflicts",
        }
    }
}

/// Which rollout halts a rollout rule fires on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutHalt {
    /// A campaign paused (by its success threshold or an operator).
    Paused,
    /// A campaign aborted itself (failure threshold).
    Aborted,
    /// Either.
    Any,
}

/// What a rule watches, parsed from its expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// A metric compared with a limit, held for a while, cleared with hysteresis.
    Threshold {
        /// The metric name as devices send it.
        metric: String,
        /// The comparison.
        comparison: Comparison,
        /// The limit.
        limit: f64,
        /// How long the comparison must hold before firing.
        hold: Duration,
        /// How far back past the limit a value must come to resolve.
        hysteresis: f64,
    },
    /// The device has been offline this long.
    Offline {
        /// How long.
        after: Duration,
    },
    /// No telemetry from the device for this long (online or not).
    NoTelemetry {
        /// How long.
        after: Duration,
    },
    /// The device's certificate expires within this span.
    CertExpires {
        /// How far ahead.
        within: Duration,
    },
    /// More than `more_than` events within `window`.
    Security {
        /// Which event.
        event: SecurityEvent,
        /// Fires when the count in the window exceeds this.
        more_than: u32,
        /// The sliding window.
        window: Duration,
    },
    /// An OTA campaign paused or aborted.
    Rollout {
        /// Which halts.
        halt: RolloutHalt,
    },
}

impl Condition {
    /// Whether the rule is about one device's data (threshold, absence,
    /// certificate, device security events): such a rule may be scoped
    /// to a device or an owner.
    pub fn is_per_device(&self) -> bool {
        !matches!(
            self,
            Condition::Rollout { .. }
                | Condition::Security {
                    event: SecurityEvent::HandshakeFailure,
                    ..
                }
        )
    }

    /// The metric a threshold rule reads, if it is one.
    pub fn metric(&self) -> Option<&str> {
        match self {
            Condition::Threshold { metric, .. } => Some(metric),
            _ => None,
        }
    }
}

impl fmt::Display for Condition {
    /// The canonical text, which parses back to the same condition.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let span = |d: &Duration| rampart_span::format(*d).replace(' ', "");
        match self {
            Condition::Threshold {
                metric,
                comparison,
                limit,
                hold,
                hysteresis,
            } => {
                write!(f, "{metric} {} {limit}", comparison.symbol())?;
                if !hold.is_zero() {
                    write!(f, " for {}", span(hold))?;
                }
                if *hysteresis > 0.0 {
                    write!(f, " hysteresis {hysteresis}")?;
                }
                Ok(())
            }
            Condition::Offline { after } => write!(f, "offline for {}", span(after)),
            Condition::NoTelemetry { after } => write!(f, "no-telemetry for {}", span(after)),
            Condition::CertExpires { within } => write!(f, "cert-expires within {}", span(within)),
            Condition::Security {
                event,
                more_than,
                window,
            } => write!(f, "{} > {more_than} in {}", event.word(), span(window)),
            Condition::Rollout { halt } => f.write_str(match halt {
                RolloutHalt::Paused => "rollout paused",
                RolloutHalt::Aborted => "rollout aborted",
                RolloutHalt::Any => "rollout halted",
            }),
        }
    }
}

/// Why an expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    /// Nothing to parse.
    #[error("the rule expression is empty")]
    Empty,
    /// Longer than [`MAX_EXPR_LEN`].
    #[error("the rule expression is longer than {MAX_EXPR_LEN} bytes")]
    TooLong,
    /// A word other than the one expected.
    #[error("expected {expected} at word {position} but found {found:?}")]
    Unexpected {
        /// What would have been accepted.
        expected: &'static str,
        /// 1-based word position.
        position: usize,
        /// What was there.
        found: String,
    },
    /// The expression ended early.
    #[error("the rule expression ends early: expected {expected}")]
    Incomplete {
        /// What was missing.
        expected: &'static str,
    },
    /// Words after a complete expression.
    #[error("unexpected {found:?} after the end of the rule expression")]
    Trailing {
        /// The first extra word.
        found: String,
    },
    /// A number that does not parse or is not finite.
    #[error("{found:?} is not a number")]
    BadNumber {
        /// The text.
        found: String,
    },
    /// A duration that does not parse, is zero or too long.
    #[error("{found:?} is not a duration between 1s and 366d (examples: 30s, 5m, 2h, 30d)")]
    BadDuration {
        /// The text.
        found: String,
    },
    /// A metric name outside `[a-z][a-z0-9_]*` or too long.
    #[error("{found:?} is not a metric name (lowercase letters, digits and _, at most 64)")]
    BadMetric {
        /// The text.
        found: String,
    },
}

/// Splits on spaces and around comparison operators.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for raw in text.split_whitespace() {
        let mut rest = raw;
        while !rest.is_empty() {
            match rest.find(['<', '>']) {
                Some(0) => {
                    let len = if rest[1..].starts_with('=') { 2 } else { 1 };
                    out.push(rest[..len].to_owned());
                    rest = &rest[len..];
                }
                Some(at) => {
                    out.push(rest[..at].to_owned());
                    rest = &rest[at..];
                }
                None => {
                    out.push(rest.to_owned());
                    rest = "";
                }
            }
        }
    }
    out
}

struct Cursor {
    words: Vec<String>,
    at: usize,
}

impl Cursor {
    fn next(&mut self, expected: &'static str) -> Result<&str, ExprError> {
        let word = self
            .words
            .get(self.at)
            .ok_or(ExprError::Incomplete { expected })?;
        self.at += 1;
        Ok(word)
    }

    fn peek(&self) -> Option<&str> {
        self.words.get(self.at).map(String::as_str)
    }

    fn keyword(&mut self, word: &'static str) -> Result<(), ExprError> {
        let position = self.at + 1;
        let found = self.next(word)?;
        if found == word {
            Ok(())
        } else {
            Err(ExprError::Unexpected {
                expected: word,
                position,
                found: found.to_owned(),
            })
        }
    }

    fn duration(&mut self) -> Result<Duration, ExprError> {
        let text = self.next("a duration such as 5m")?;
        let d = humantime::parse_duration(text).map_err(|_| ExprError::BadDuration {
            found: text.to_owned(),
        })?;
        if d < Duration::from_secs(1) || d > MAX_DURATION {
            return Err(ExprError::BadDuration {
                found: text.to_owned(),
            });
        }
        Ok(d)
    }

    fn number(&mut self) -> Result<f64, ExprError> {
        let text = self.next("a number")?;
        text.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| ExprError::BadNumber {
                found: text.to_owned(),
            })
    }

    fn end(&self) -> Result<(), ExprError> {
        match self.peek() {
            None => Ok(()),
            Some(w) => Err(ExprError::Trailing {
                found: w.to_owned(),
            }),
        }
    }
}

fn is_metric(word: &str) -> bool {
    let mut bytes = word.bytes();
    word.len() <= MAX_METRIC_LEN
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Parses a rule expression.
pub fn parse(text: &str) -> Result<Condition, ExprError> {
    if text.len() > MAX_EXPR_LEN {
        return Err(ExprError::TooLong);
    }
    let words = words(text);
    if words.is_empty() {
        return Err(ExprError::Empty);
    }
    let mut c = Cursor { words, at: 0 };
    let first = c.next("a metric or a rule kind")?.to_owned();
    let condition = match first.as_str() {
        "offline" => {
            c.keyword("for")?;
            Condition::Offline {
                after: c.duration()?,
            }
        }
        "no-telemetry" => {
            c.keyword("for")?;
            Condition::NoTelemetry {
                after: c.duration()?,
            }
        }
        "cert-expires" => {
            let within = if c.peek().is_some() {
                c.keyword("within")?;
                c.duration()?
            } else {
                DEFAULT_CERT_WINDOW
            };
            Condition::CertExpires { within }
        }
        "rollout" => {
            let position = c.at + 1;
            let halt = match c.next("paused, aborted or halted")? {
                "paused" => RolloutHalt::Paused,
                "aborted" => RolloutHalt::Aborted,
                "halted" => RolloutHalt::Any,
                other => {
                    return Err(ExprError::Unexpected {
                        expected: "paused, aborted or halted",
                        position,
                        found: other.to_owned(),
                    });
                }
            };
            Condition::Rollout { halt }
        }
        word => {
            if let Some(event) = SecurityEvent::ALL.into_iter().find(|e| e.word() == word) {
                security(&mut c, event)?
            } else if is_metric(word) {
                threshold(&mut c, word)?
            } else {
                return Err(ExprError::BadMetric {
                    found: word.to_owned(),
                });
            }
        }
    };
    c.end()?;
    Ok(condition)
}

fn security(c: &mut Cursor, event: SecurityEvent) -> Result<Condition, ExprError> {
    if c.peek().is_none() {
        return Ok(Condition::Security {
            event,
            more_than: 0,
            window: DEFAULT_EVENT_WINDOW,
        });
    }
    c.keyword(">")?;
    let text = c.next("a count")?;
    let more_than = text.parse::<u32>().map_err(|_| ExprError::BadNumber {
        found: text.to_owned(),
    })?;
    c.keyword("in")?;
    Ok(Condition::Security {
        event,
        more_than,
        window: c.duration()?,
    })
}

fn threshold(c: &mut Cursor, metric: &str) -> Result<Condition, ExprError> {
    let position = c.at + 1;
    let comparison = match c.next("a comparison (>, >=, <, <=)")? {
        ">" => Comparison::Above,
        ">=" => Comparison::AtLeast,
        "<" => Comparison::Below,
        "<=" => Comparison::AtMost,
        other => {
            return Err(ExprError::Unexpected {
                expected: "a comparison (>, >=, <, <=)",
                position,
                found: other.to_owned(),
            });
        }
    };
    let limit = c.number()?;
    let mut hold = Duration::ZERO;
    let mut hysteresis = 0.0;
    if c.peek() == Some("for") {
        c.keyword("for")?;
        hold = c.duration()?;
    }
    if c.peek() == Some("hysteresis") {
        c.keyword("hysteresis")?;
        hysteresis = c.number()?;
        if hysteresis < 0.0 {
            return Err(ExprError::BadNumber {
                found: hysteresis.to_string(),
            });
        }
    }
    Ok(Condition::Threshold {
        metric: metric.to_owned(),
        comparison,
        limit,
        hold,
        hysteresis,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn min(n: u64) -> Duration {
        Duration::from_secs(60 * n)
    }

    #[test]
    fn the_issue_examples_parse() {
        assert_eq!(
            parse("offline for 10m"),
            Ok(Condition::Offline { after: min(10) })
        );
        assert_eq!(
            parse("temperature > 30 for 5m"),
            Ok(Condition::Threshold {
                metric: "temperature".into(),
                comparison: Comparison::Above,
                limit: 30.0,
                hold: min(5),
                hysteresis: 0.0,
            })
        );
        assert_eq!(
            parse("no-telemetry for 15m"),
            Ok(Condition::NoTelemetry { after: min(15) })
        );
        assert_eq!(
            parse("cert-expires within 30d"),
            Ok(Condition::CertExpires {
                within: DEFAULT_CERT_WINDOW
            })
        );
        assert_eq!(
            parse("humidity<20"),
            Ok(Condition::Threshold {
                metric: "humidity".into(),
                comparison: Comparison::Below,
                limit: 20.0,
                hold: Duration::ZERO,
                hysteresis: 0.0,
            })
        );
        assert_eq!(
            parse("  temperature>=30.5   for 30s hysteresis 1.5 "),
            Ok(Condition::Threshold {
                metric: "temperature".into(),
                comparison: Comparison::AtLeast,
                limit: 30.5,
                hold: Duration::from_secs(30),
                hysteresis: 1.5,
            })
        );
        assert_eq!(
            parse("acl-denials"),
            Ok(Condition::Security {
                event: SecurityEvent::AclDenial,
                more_than: 0,
                window: DEFAULT_EVENT_WINDOW
            })
        );
        assert_eq!(
            parse("handshake-failures > 20 in 1m"),
            Ok(Condition::Security {
                event: SecurityEvent::HandshakeFailure,
                more_than: 20,
                window: min(1)
            })
        );
        assert_eq!(
            parse("rollout halted"),
            Ok(Condition::Rollout {
                halt: RolloutHalt::Any
            })
        );
    }

    #[test]
    fn refusals_say_what_was_wrong() {
        assert_eq!(parse("   "), Err(ExprError::Empty));
        assert_eq!(
            parse(&"x".repeat(MAX_EXPR_LEN + 1)),
            Err(ExprError::TooLong)
        );
        assert_eq!(
            parse("offline 10m"),
            Err(ExprError::Unexpected {
                expected: "for",
                position: 2,
                found: "10m".into()
            })
        );
        assert_eq!(
            parse("offline for"),
            Err(ExprError::Incomplete {
                expected: "a duration such as 5m"
            })
        );
        assert_eq!(
            parse("offline for 0s"),
            Err(ExprError::BadDuration { found: "0s".into() })
        );
        assert_eq!(
            parse("offline for ten minutes"),
            Err(ExprError::BadDuration {
                found: "ten".into()
            })
        );
        assert_eq!(
            parse("temperature > hot"),
            Err(ExprError::BadNumber {
                found: "hot".into()
            })
        );
        assert_eq!(
            parse("temperature > NaN"),
            Err(ExprError::BadNumber {
                found: "NaN".into()
            })
        );
        assert_eq!(
            parse("temperature = 3"),
            Err(ExprError::Unexpected {
                expected: "a comparison (>, >=, <, <=)",
                position: 2,
                found: "=".into()
            })
        );
        assert_eq!(
            parse("Temperature > 3"),
            Err(ExprError::BadMetric {
                found: "Temperature".into()
            })
        );
        assert_eq!(
            parse("temperature > 3 for 5m please"),
            Err(ExprError::Trailing {
                found: "please".into()
            })
        );
        assert_eq!(
            parse("temperature > 3 hysteresis -1"),
            Err(ExprError::BadNumber { found: "-1".into() })
        );
        assert!(parse("rollout stalled").is_err());
        assert!(parse("acl-denials > -1 in 5m").is_err());
        let message = parse("offline 10m").expect_err("refused").to_string();
        assert_eq!(message, "expected for at word 2 but found \"10m\"");
    }

    #[test]
    fn hysteresis_delays_clearing() {
        let c = Comparison::Above;
        assert!(c.holds(30.1, 30.0));
        assert!(!c.cleared(29.5, 30.0, 1.0));
        assert!(c.cleared(29.0, 30.0, 1.0));
        assert!(c.cleared(30.0, 30.0, 0.0));
        let c = Comparison::Below;
        assert!(!c.cleared(20.5, 20.0, 1.0));
        assert!(c.cleared(21.0, 20.0, 1.0));
    }

    fn condition() -> impl Strategy<Value = Condition> {
        let span = (1u64..366 * 86_400).prop_map(Duration::from_secs);
        prop_oneof![
            (
                "[a-z][a-z0-9_]{0,20}",
                0usize..4,
                -1000i32..1000,
                prop_oneof![Just(Duration::ZERO), span.clone()],
                0u8..10
            )
                .prop_map(|(metric, op, limit, hold, h)| Condition::Threshold {
                    metric,
                    comparison: [
                        Comparison::Above,
                        Comparison::AtLeast,
                        Comparison::Below,
                        Comparison::AtMost
                    ][op],
                    limit: f64::from(limit) / 4.0,
                    hold,
                    hysteresis: f64::from(h) / 2.0,
                })
                .prop_filter("metric words are keywords", |c| {
                    !matches!(c.metric(), Some("offline" | "rollout"))
                }),
            span.clone().prop_map(|after| Condition::Offline { after }),
            span.clone()
                .prop_map(|after| Condition::NoTelemetry { after }),
            span.clone()
                .prop_map(|within| Condition::CertExpires { within }),
            (0usize..4, any::<u32>(), span).prop_map(|(e, more_than, window)| {
                Condition::Security {
                    event: SecurityEvent::ALL[e],
                    more_than,
                    window,
                }
            }),
        ]
    }

    #[test]
    fn long_spans_are_written_in_days() {
        let sixty_days = Condition::CertExpires {
            within: Duration::from_secs(60 * 86_400),
        };
        assert_eq!(sixty_days.to_string(), "cert-expires within 60days");
        let hold = Condition::NoTelemetry {
            after: Duration::from_secs(45 * 86_400 + 12 * 3600),
        };
        assert_eq!(hold.to_string(), "no-telemetry for 45days12h");
        assert_eq!(parse(&hold.to_string()), Ok(hold));
    }

    proptest! {
        #[test]
        fn display_parses_back(c in condition()) {
            prop_assert_eq!(parse(&c.to_string()), Ok(c));
        }

        #[test]
        fn any_text_is_parsed_or_refused(text in "\\PC{0,80}") {
            let _ = parse(&text);
        }
    }
}
