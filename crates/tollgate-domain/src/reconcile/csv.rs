//! A small RFC 4180 reader: quoted fields (with `""` escapes and line breaks inside),
//! CRLF or LF line ends, a byte-order mark. Each record carries the line it starts on, so
//! an error can name it. CUR 2.0 and FOCUS exports are plain RFC 4180.

/// One record and the (1-based) line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub line: usize,
    pub fields: Vec<String>,
}

/// Why the text is not CSV: an unterminated quote (from the line it opened on), or text
/// after a closing quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvError {
    pub line: usize,
    pub message: String,
}

/// Every record of `text`, blank lines skipped.
pub fn records(text: &str) -> Result<Vec<Record>, CsvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1usize;
    let mut start_line = 1usize;
    let mut in_quotes = false;
    let mut quote_line = 0usize;
    let mut after_quote = false;
    let mut chars = text.chars().peekable();
    let mut row_has_content = false;
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    in_quotes = false;
                    after_quote = true;
                }
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            ',' => {
                fields.push(std::mem::take(&mut field));
                after_quote = false;
                row_has_content = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                if row_has_content || !field.is_empty() || after_quote {
                    fields.push(std::mem::take(&mut field));
                    out.push(Record {
                        line: start_line,
                        fields: std::mem::take(&mut fields),
                    });
                }
                after_quote = false;
                row_has_content = false;
                line += 1;
                start_line = line;
            }
            '"' if field.is_empty() && !after_quote => {
                in_quotes = true;
                quote_line = line;
                row_has_content = true;
            }
            _ if after_quote => {
                return Err(CsvError {
                    line,
                    message: format!("text after a closing quote: {c:?}"),
                });
            }
            _ => {
                field.push(c);
                row_has_content = true;
            }
        }
    }
    if in_quotes {
        return Err(CsvError {
            line: quote_line,
            message: "a quoted field is never closed".into(),
        });
    }
    if row_has_content || !field.is_empty() || after_quote {
        fields.push(field);
        out.push(Record {
            line: start_line,
            fields,
        });
    }
    Ok(out)
}

/// A header row's column positions, looked up by name (exact, then ignoring case and
/// `/` vs `_`, so legacy CUR's `lineItem/UsageType` finds CUR 2.0's
/// `line_item_usage_type`).
#[derive(Debug, Clone)]
pub struct Header {
    names: Vec<String>,
}

fn fold(s: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in s.trim().chars() {
        if c == '/' || c == '_' || c == ' ' {
            if !out.ends_with('_') {
                out.push('_');
            }
            prev_lower = false;
        } else if c.is_ascii_uppercase() && prev_lower {
            out.push('_');
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else {
            out.push(c.to_ascii_lowercase());
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

impl Header {
    pub fn new(fields: &[String]) -> Header {
        Header {
            names: fields.to_vec(),
        }
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Some(i);
        }
        let want = fold(name);
        self.names.iter().position(|n| fold(n) == want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_quoted_fields_and_tracks_lines() {
        let text = "\u{feff}a,b,c\r\n1,\"x, \"\"y\"\"\",3\n\n\"multi\nline\",,\"\"\nlast,row,end";
        let r = records(text).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].fields, ["a", "b", "c"]);
        assert_eq!(r[1].fields, ["1", "x, \"y\"", "3"]);
        assert_eq!(r[1].line, 2);
        assert_eq!(r[2].fields, ["multi\nline", "", ""]);
        assert_eq!(r[2].line, 4);
        assert_eq!(r[3].line, 6);
        assert_eq!(r[3].fields, ["last", "row", "end"]);
    }

    #[test]
    fn malformed_csv_names_the_line() {
        let e = records("a,b\n1,\"open\n2,3\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = records("a,b\n\"x\"y,2\n").unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn header_lookup_folds_cur_spellings() {
        let h = Header::new(&["lineItem/UsageType".into(), "BilledCost".into()]);
        assert_eq!(h.find("line_item_usage_type"), Some(0));
        assert_eq!(h.find("BilledCost"), Some(1));
        assert_eq!(h.find("billed_cost"), Some(1));
        assert_eq!(h.find("nope"), None);
    }
}
