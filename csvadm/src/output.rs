//! Printing a command's result. Each command builds a view: a struct that serializes to
//! the command's JSON and displays as its text; [`print`] prints one or the other.

use std::fmt::Display;

use serde::Serialize;

/// How a view is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The view's `Display`, then a newline.
    Text,
    /// JSON on one line (`--json` of the admin commands).
    Json,
    /// Indented JSON (`csvadm image info|check --json`).
    PrettyJson,
}

impl Output {
    /// [`Output::Json`] when `json` is set, else [`Output::Text`].
    pub fn json_if(json: bool) -> Output {
        if json { Output::Json } else { Output::Text }
    }
}

/// The JSON text of a view. The view goes through a `serde_json::Value` first, so object
/// keys come out sorted whatever the order of a view's fields: the order csvadm has always
/// printed (scripts parse it, people diff it).
pub fn to_json(view: &impl Serialize, pretty: bool) -> serde_json::Result<String> {
    let value = serde_json::to_value(view)?;
    if pretty {
        serde_json::to_string_pretty(&value)
    } else {
        serde_json::to_string(&value)
    }
}

/// Prints `view` as `out` says, with a final newline.
pub fn print<V: Serialize + Display>(view: &V, out: Output) -> serde_json::Result<()> {
    let text = match out {
        Output::Text => view.to_string(),
        Output::Json => to_json(view, false)?,
        Output::PrettyJson => to_json(view, true)?,
    };
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        // A reader that stopped reading (`| head`) is not an error of csvadm.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(serde_json::Error::io(e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct View {
        zeta: u64,
        alpha: Option<&'static str>,
        nested: Nested,
    }

    #[derive(Serialize)]
    struct Nested {
        b: bool,
        a: [u64; 2],
    }

    #[test]
    fn json_keys_are_sorted() {
        let v = View {
            zeta: 1,
            alpha: None,
            nested: Nested { b: true, a: [1, 2] },
        };
        assert_eq!(
            to_json(&v, false).expect("json"),
            r#"{"alpha":null,"nested":{"a":[1,2],"b":true},"zeta":1}"#
        );
        assert_eq!(
            to_json(&v.nested, true).expect("json"),
            "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": true\n}"
        );
        assert_eq!(Output::json_if(true), Output::Json);
        assert_eq!(Output::json_if(false), Output::Text);
    }
}
