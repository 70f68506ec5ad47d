//! UTC calendar dates for the command line (`--expires`, `--since`), without
//! a date crate: days from 1970-01-01 and back (Howard Hinnant's algorithm).

/// `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM:SSZ` to unix seconds.
pub fn parse_utc(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?}: expected a UTC date, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ");
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z').ok_or_else(bad)?)),
        None => (s, None),
    };
    let num = |p: &str, len: usize| {
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<i64>().ok())
            .flatten()
            .ok_or_else(bad)
    };
    let mut d = date.split('-');
    let (y, m, day) = match (d.next(), d.next(), d.next(), d.next()) {
        (Some(y), Some(m), Some(day), None) => (num(y, 4)?, num(m, 2)?, num(day, 2)?),
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&m) || day < 1 || day > days_in_month(y, m) {
        return Err(bad());
    }
    let secs = match time {
        None => 0,
        Some(t) => {
            let mut p = t.split(':');
            match (p.next(), p.next(), p.next(), p.next()) {
                (Some(h), Some(mi), Some(se), None) => {
                    let (h, mi, se) = (num(h, 2)?, num(mi, 2)?, num(se, 2)?);
                    if h > 23 || mi > 59 || se > 59 {
                        return Err(bad());
                    }
                    h * 3600 + mi * 60 + se
                }
                _ => return Err(bad()),
            }
        }
    };
    Ok(days_from_civil(y, m, day) * 86_400 + secs)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Unix seconds of the start of the UTC day, ISO week (Monday) or month
/// that holds `secs`.
pub fn start_of_day(secs: i64) -> i64 {
    secs.div_euclid(86_400) * 86_400
}

pub fn start_of_week(secs: i64) -> i64 {
    let days = secs.div_euclid(86_400);
    // 1970-01-01 was a Thursday: day 0 is 3 days after a Monday.
    (days - (days + 3).rem_euclid(7)) * 86_400
}

pub fn start_of_month(secs: i64) -> i64 {
    let (y, m, _) = civil_from_days(secs.div_euclid(86_400));
    days_from_civil(y, m, 1) * 86_400
}

/// The start of the month after the one that starts at `month_start`.
pub fn next_month(month_start: i64) -> i64 {
    let (y, m, _) = civil_from_days(month_start.div_euclid(86_400));
    let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(y, m, 1) * 86_400
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_known_points() {
        assert_eq!(parse_utc("1970-01-01"), Ok(0));
        assert_eq!(parse_utc("2000-03-01T00:00:00Z"), Ok(951_868_800));
        assert_eq!(parse_utc("2026-12-02T11:08:17Z"), Ok(1_796_209_697));
        assert_eq!(format_utc(1_796_209_697), "2026-12-02T11:08:17Z");
        assert_eq!(parse_utc("2024-02-29"), Ok(1_709_164_800));
        // Wednesday 2026-12-02: its week began on Monday 2026-11-30.
        let t = parse_utc("2026-12-02T11:08:17Z").unwrap();
        assert_eq!(format_utc(start_of_day(t)), "2026-12-02T00:00:00Z");
        assert_eq!(format_utc(start_of_week(t)), "2026-11-30T00:00:00Z");
        assert_eq!(
            format_utc(start_of_week(parse_utc("2026-11-30").unwrap())),
            "2026-11-30T00:00:00Z"
        );
        assert_eq!(
            format_utc(start_of_week(parse_utc("2026-11-29T23:59:59Z").unwrap())),
            "2026-11-23T00:00:00Z"
        );
        assert_eq!(format_utc(start_of_month(t)), "2026-12-01T00:00:00Z");
        assert_eq!(
            format_utc(next_month(start_of_month(t))),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            format_utc(next_month(parse_utc("2024-01-01").unwrap())),
            "2024-02-01T00:00:00Z"
        );
        for s in [0, 951_868_799, 4_102_444_800, -86_400] {
            assert_eq!(parse_utc(&format_utc(s)), Ok(s));
        }
    }

    #[test]
    fn malformed_dates_are_refused() {
        for s in [
            "",
            "2026",
            "2026-13-01",
            "2026-02-29",
            "2026-1-01",
            "2026-01-01T25:00:00Z",
            "2026-01-01T10:00:00",
            "2026-01-01x",
            "+026-01-01",
            "2026-01-01-01",
        ] {
            assert!(parse_utc(s).is_err(), "{s:?} accepted");
        }
    }
}
