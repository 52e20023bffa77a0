//! Lectures: weekly (weekday and start) or on a date, in the course's time zone.

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;

#[derive(Debug, Clone, PartialEq)]
pub enum When {
    Weekly(Weekday),
    On(Date),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Lecture {
    pub when: When,
    pub start: Time,
    pub seconds: u64,
}

/// One lecture's time: Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub start: i64,
    pub end: i64,
}

impl Lecture {
    pub fn new(
        weekday: Option<&str>,
        date: Option<&str>,
        start: &str,
        duration: &str,
    ) -> Result<Lecture, String> {
        let when = match (weekday, date) {
            (Some(w), None) => When::Weekly(weekday_of(w).ok_or_else(|| {
                format!("`weekday = \"{w}\"`: one of mon, tue, wed, thu, fri, sat, sun")
            })?),
            (None, Some(d)) => When::On(
                d.parse::<Date>()
                    .map_err(|_| format!("`date = \"{d}\"`: a date like `2026-12-10`"))?,
            ),
            _ => return Err("give either `weekday` or `date`".into()),
        };
        let t = start
            .split_once(':')
            .and_then(|(h, m)| Some((h.parse::<i8>().ok()?, m.parse::<i8>().ok()?)))
            .and_then(|(h, m)| Time::new(h, m, 0, 0).ok())
            .ok_or_else(|| format!("`start = \"{start}\"`: a time like `09:00`"))?;
        let seconds = crate::values::parse_duration(duration)
            .ok()
            .filter(|s| (60..=12 * 3600).contains(s))
            .ok_or_else(|| {
                format!("`duration = \"{duration}\"`: from `1m` to `12h`, like `90m`")
            })?;
        Ok(Lecture {
            when,
            start: t,
            seconds,
        })
    }
}

fn weekday_of(w: &str) -> Option<Weekday> {
    Some(match w.to_ascii_lowercase().get(..3)? {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        _ => return None,
    })
}

fn zone(name: &str) -> TimeZone {
    jiff::tz::db().get(name).unwrap_or(TimeZone::UTC)
}

fn at(date: Date, t: Time, tz: &TimeZone) -> Option<i64> {
    date.to_datetime(t)
        .to_zoned(tz.clone())
        .ok()
        .map(|z| z.timestamp().as_second())
}

/// The lecture running at `now` or the first to start after it.
pub fn next(lectures: &[Lecture], tz_name: &str, now: i64) -> Option<Slot> {
    let tz = zone(tz_name);
    let today = jiff::Timestamp::from_second(now)
        .ok()?
        .to_zoned(tz.clone())
        .date();
    let mut best: Option<Slot> = None;
    let mut consider = |start: Option<i64>, secs: u64| {
        if let Some(s) = start {
            let slot = Slot {
                start: s,
                end: s + secs as i64,
            };
            if slot.end > now && best.is_none_or(|b| slot.start < b.start) {
                best = Some(slot);
            }
        }
    };
    for l in lectures {
        match &l.when {
            When::On(d) => consider(at(*d, l.start, &tz), l.seconds),
            When::Weekly(w) => {
                // Yesterday (a lecture past midnight may still run) to a week ahead.
                for back in -1i64..8 {
                    let Ok(d) = today.checked_add(jiff::Span::new().days(back)) else {
                        continue;
                    };
                    if d.weekday() == *w {
                        consider(at(d, l.start, &tz), l.seconds);
                    }
                }
            }
        }
    }
    best
}

/// `Mon 2026-12-07 09:00` in the course's zone.
pub fn label(slot: &Slot, tz_name: &str) -> String {
    jiff::Timestamp::from_second(slot.start)
        .map(|t| {
            t.to_zoned(zone(tz_name))
                .strftime("%a %Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_default()
}

/// `09:00` in the course's zone.
pub fn clock(slot: &Slot, tz_name: &str) -> String {
    jiff::Timestamp::from_second(slot.start)
        .map(|t| t.to_zoned(zone(tz_name)).strftime("%H:%M").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str, tz: &str) -> i64 {
        s.parse::<jiff::civil::DateTime>()
            .unwrap()
            .to_zoned(zone(tz))
            .unwrap()
            .timestamp()
            .as_second()
    }

    #[test]
    fn weekly_and_dated_lectures_in_their_zone() {
        let ls = vec![
            Lecture::new(Some("mon"), None, "09:00", "90m").unwrap(),
            Lecture::new(None, Some("2026-12-03"), "13:00", "1h").unwrap(),
        ];
        let tz = "Asia/Tokyo";
        // Thursday 2026-12-03 10:00 in Tokyo: the dated lecture at 13:00 is next.
        let now = ts("2026-12-03T10:00", tz);
        let n = next(&ls, tz, now).unwrap();
        assert_eq!(n.start, ts("2026-12-03T13:00", tz));
        assert_eq!(label(&n, tz), "Thu 2026-12-03 13:00");
        // During it, it is still the one.
        assert_eq!(next(&ls, tz, ts("2026-12-03T13:30", tz)).unwrap(), n);
        // After it: Monday 09:00.
        let m = next(&ls, tz, ts("2026-12-03T14:01", tz)).unwrap();
        assert_eq!(m.start, ts("2026-12-07T09:00", tz));
        assert_eq!(m.end - m.start, 5400);
        assert_eq!(clock(&m, tz), "09:00");
        // Only past dated lectures and nothing weekly: none.
        assert_eq!(next(&ls[1..], tz, ts("2027-01-01T00:00", tz)), None);
    }

    #[test]
    fn bad_lectures_say_what_to_write() {
        assert!(Lecture::new(Some("someday"), None, "09:00", "1h")
            .unwrap_err()
            .contains("mon"));
        assert!(Lecture::new(None, None, "09:00", "1h")
            .unwrap_err()
            .contains("either"));
        assert!(Lecture::new(Some("mon"), None, "9", "1h")
            .unwrap_err()
            .contains("09:00"));
        assert!(Lecture::new(Some("mon"), None, "09:00", "2d")
            .unwrap_err()
            .contains("12h"));
    }
}
