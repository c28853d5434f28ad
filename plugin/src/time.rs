//! The date-time and duration formats Evotor sends.

use serde_json::Value;

/// Unix seconds as Unix milliseconds.
pub fn millis(seconds: u64) -> i64 {
    i64::try_from(seconds).unwrap_or(i64::MAX / 1000).saturating_mul(1000)
}

/// Reads a timestamp in any form Evotor uses: an ISO 8601 string (see
/// [`parse_datetime`]), Unix milliseconds as a number or a numeric string
/// (`1504168645290`, `"1504168645290"`). Returns Unix milliseconds.
pub fn timestamp(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => {
            let millis = number.as_i64().or_else(|| {
                number.as_f64().filter(|f| f.is_finite() && f.fract() == 0.0 && f.abs() < 9e15).map(|f| f as i64)
            })?;
            Some(millis)
        }
        Value::String(text) => {
            let text = text.trim();
            match text.parse::<i64>() {
                Ok(millis) => Some(millis),
                Err(_) => parse_datetime(text),
            }
        }
        _ => None,
    }
}

/// Parses an ISO 8601 date-time with an offset, as Evotor writes them
/// (`2017-04-20T18:26:37.753+0000`, `…Z`, `…+03:00`), into Unix milliseconds.
pub fn parse_datetime(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 19 || bytes[4] != b'-' || bytes[7] != b'-' || !matches!(bytes[10], b'T' | b't' | b' ') {
        return None;
    }
    if bytes[13] != b':' || bytes[16] != b':' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok()).flatten()
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = padded.parse::<i64>().ok()?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        // No offset at all: Evotor's clocks are UTC.
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let digits: String = rest[1..].chars().filter(|c| *c != ':').collect();
            if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let hours: i64 = digits[..2].parse().ok()?;
            let minutes: i64 = digits[2..].parse().ok()?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            sign * (hours * 60 + minutes)
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The time a delivery carries (`found`: the field's name and value), or
/// `arrival` (Unix ms) when it carries none (`missing` names what) or one
/// that is not a date-time; either is noted in `problems`.
pub fn or_arrival(found: Option<(&str, &Value)>, missing: &str, arrival: i64, problems: &mut Vec<String>) -> i64 {
    match found {
        Some((field, value)) => timestamp(value).unwrap_or_else(|| {
            problems.push(format!("{field} {value} is not a date-time: filed at its arrival"));
            arrival
        }),
        None => {
            problems.push(format!("no {missing}: filed at its arrival"));
            arrival
        }
    }
}

/// How far ahead of its arrival a document's or receipt's date may be and
/// still file it: terminals' clocks and time zones err by hours, not more.
pub const MAX_DATE_AHEAD_MS: i64 = 86_400_000;

/// Where a record dated `at` (its `field`) that arrived at `arrival` is
/// filed in its store's date index: at its date, or, when that is more
/// than [`MAX_DATE_AHEAD_MS`] ahead, at its arrival (with a problem), so
/// that it is listed among what arrived then and expires with it.
pub fn filed_at(at: i64, field: &str, arrival: i64, problems: &mut Vec<String>) -> i64 {
    if at > arrival.saturating_add(MAX_DATE_AHEAD_MS) {
        problems.push(format!("{field} {at} ms is more than a day after its arrival: filed at its arrival"));
        arrival
    } else {
        at
    }
}

/// Reads a trial length: an ISO 8601 duration of whole days (`PnD`,
/// `PnDT`, `PnDT0H`), or a number of days as a number or numeric string.
pub fn days(value: &Value) -> Option<u32> {
    match value {
        Value::Number(number) => number.as_u64().and_then(|days| u32::try_from(days).ok()),
        Value::String(text) => {
            let text = text.trim();
            text.parse::<u32>().ok().or_else(|| parse_days(text))
        }
        _ => None,
    }
}

/// Parses an ISO 8601 duration of whole days, `PnD` or `PnDT` (Evotor's
/// trial periods), into days.
pub fn parse_days(text: &str) -> Option<u32> {
    let text = text.to_ascii_uppercase();
    let inner = text.strip_prefix('P')?;
    // `P14DT0H0M` and `P14DT0S` are whole days too.
    let inner = match inner.split_once('T') {
        Some((days, time)) if time.trim_start_matches(|c: char| c == '0' || "HMS".contains(c)).is_empty() => days,
        Some(_) => return None,
        None => inner,
    };
    let digits = inner.strip_suffix('D')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evotor_timestamps_parse_to_unix_millis() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00.000+0000"), Some(0));
        assert_eq!(parse_datetime("2017-04-20T18:26:37.753+0000"), Some(1_492_712_797_753));
        assert_eq!(parse_datetime("2017-04-20T21:26:37.753+0300"), Some(1_492_712_797_753));
        assert_eq!(parse_datetime("2017-04-20T21:26:37.753+03:00"), Some(1_492_712_797_753));
        assert_eq!(parse_datetime("2017-04-20T18:26:37Z"), Some(1_492_712_797_000));
        assert_eq!(parse_datetime("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
    }

    #[test]
    fn malformed_timestamps_are_refused() {
        for bad in [
            "",
            "2017-04-20",
            "2017-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2017-04-20T25:00:00Z",
            "2017-04-20T18:26:37.+0000",
            "2017-04-20T18:26:37+3",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_come_as_iso_or_unix_millis() {
        use serde_json::json;
        let millis = 1_504_168_645_290;
        for value in [
            json!(1_504_168_645_290u64),
            json!("1504168645290"),
            json!(1_504_168_645_290.0),
            json!("2017-08-31T08:37:25.290Z"),
            json!("2017-08-31T08:37:25.290+0000"),
            json!("2017-08-31T11:37:25.290+03:00"),
            json!("2017-08-31T08:37:25.29"),
        ] {
            assert_eq!(timestamp(&value), Some(millis), "{value}");
        }
        assert_eq!(timestamp(&json!("2017-08-31T08:37:25Z")), Some(1_504_168_645_000));
        for bad in [json!(null), json!(true), json!("yesterday"), json!(1.5), json!([1])] {
            assert_eq!(timestamp(&bad), None, "{bad}");
        }
    }

    #[test]
    fn trial_lengths_come_as_durations_or_days() {
        use serde_json::json;
        for (value, days_) in
            [(json!("P14D"), 14), (json!("P14DT"), 14), (json!("p7dt0h"), 7), (json!(30), 30), (json!("30"), 30)]
        {
            assert_eq!(days(&value), Some(days_), "{value}");
        }
        assert_eq!(days(&json!("P1DT5H")), None);
        assert_eq!(days(&json!(-1)), None);
    }

    #[test]
    fn trial_durations_are_whole_days() {
        assert_eq!(parse_days("P14DT"), Some(14));
        assert_eq!(parse_days("P0D"), Some(0));
        assert_eq!(parse_days("P14"), None);
        assert_eq!(parse_days("14D"), None);
        assert_eq!(parse_days("PT14H"), None);
    }
}
