//! Log lines at a level the plugin chooses. The gateway logs what a plugin
//! writes to stderr and stdout, one event per line, tagged with the plugin,
//! its version and the request; a line starting with a syslog priority
//! (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug — what systemd reads
//! from a service) gets that level, an unprefixed line on stderr is a
//! warning. These functions write the prefix, on every line of the message.
//!
//! ```
//! evogate_plugin::log::info("sync: 3 users, 120 documents");
//! evogate_plugin::log::warn(&format!("user {}: the cloud refused the token", "01-0001"));
//! ```

use std::io::Write as _;

/// An error: something failed that someone should look at.
pub fn error(message: &str) {
    write(3, message);
}

/// A warning: something went wrong and was handled.
pub fn warn(message: &str) {
    write(4, message);
}

/// Routine information: what a request or job did.
pub fn info(message: &str) {
    write(6, message);
}

/// Detail for finding a problem (not logged unless the operator asks: `EVOGATE_LOG=plugin=debug`).
pub fn debug(message: &str) {
    write(7, message);
}

fn write(priority: u8, message: &str) {
    // One write per message, so that no other output lands between its lines.
    let _ = std::io::stderr().lock().write_all(prefixed(priority, message).as_bytes());
}

/// `message` with `<priority>` before each of its lines.
fn prefixed(priority: u8, message: &str) -> String {
    let mut text = String::with_capacity(message.len() + 4);
    for line in message.lines() {
        text.push_str(&format!("<{priority}>{line}\n"));
    }
    if text.is_empty() {
        text = format!("<{priority}>\n");
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_line_of_a_message_gets_the_priority() {
        assert_eq!(super::prefixed(6, "first\nsecond\r\n"), "<6>first\n<6>second\n");
        assert_eq!(super::prefixed(4, ""), "<4>\n", "an empty message is one empty line");
        assert_eq!(super::prefixed(3, "one"), "<3>one\n");
    }
}
