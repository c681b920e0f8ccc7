//! Listings: one page, or every page with `--all`, printed as each page
//! arrives so that a listing of any length needs the memory of one page.

use std::io::Write;

use serde_json::Value;

use tokenauth::proto::Token;

use super::{CliError, Output, json, table};

/// One page of a listing.
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

/// How a listing's items print.
pub struct Printer<T> {
    /// The field of the response that holds the items (`tokens`, `events`…).
    pub field: &'static str,
    pub header: fn() -> String,
    pub row: fn(&T, i64) -> String,
    pub json: fn(&T) -> Value,
}

/// Fetches the page at `page_token` (and, with `all`, every page after it)
/// and prints it to `out`: a table, or the response's JSON (with `all`, one
/// item per line). Each page is written and flushed before the next is asked
/// for, so a reader that stops (`| head`) stops the listing.
pub async fn list<T>(
    out: &mut impl Write,
    output: Output,
    all: bool,
    page_token: String,
    printer: &Printer<T>,
    mut fetch: impl AsyncFnMut(String) -> Result<Page<T>, CliError>,
) -> Result<(), CliError> {
    let now = super::table::now();
    let written = |result: std::io::Result<()>| result.map_err(CliError::from_output);
    if !all {
        let page = fetch(page_token).await?;
        match output {
            Output::Json => {
                let value = super::json::Object::new()
                    .list(printer.field, page.items.iter().map(printer.json).collect())
                    .string("nextPageToken", &page.next_page_token)
                    .build();
                written(writeln!(out, "{}", pretty(&value)?))?;
            }
            Output::Table => {
                written(writeln!(out, "{}", (printer.header)()))?;
                for item in &page.items {
                    written(writeln!(out, "{}", (printer.row)(item, now)))?;
                }
                if !page.next_page_token.is_empty() {
                    eprintln!("more: add --page-token {} (or --all)", page.next_page_token);
                }
            }
        }
        return written(out.flush());
    }
    if output == Output::Table {
        written(writeln!(out, "{}", (printer.header)()))?;
    }
    let mut token = page_token;
    loop {
        let page = fetch(token.clone()).await?;
        for item in &page.items {
            let line = match output {
                Output::Json => serde_json::to_string(&(printer.json)(item))
                    .map_err(|e| CliError::Failed(format!("writing JSON: {e}")))?,
                Output::Table => (printer.row)(item, now),
            };
            written(writeln!(out, "{line}"))?;
        }
        written(out.flush())?;
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        // A server that hands back the page it was asked for would loop for ever.
        if page.next_page_token == token {
            return Err(CliError::Failed(
                "the server returned the page token it was given; stopping".into(),
            ));
        }
        token = page.next_page_token;
    }
}

/// A dry run's answer: how many tokens the change would revoke and the
/// first of them, as a table under `summary` or as JSON
/// (`affectedCount`, `affected`), so a person sees the blast radius first.
pub fn print_affected(
    out: &mut impl Write,
    output: Output,
    summary: &str,
    affected_count: u64,
    affected: &[Token],
    now: i64,
) -> Result<(), CliError> {
    let text = match output {
        Output::Json => format!(
            "{}\n",
            pretty(
                &json::Object::new()
                    .uint64("affectedCount", affected_count)
                    .list("affected", affected.iter().map(json::token).collect())
                    .build()
            )?
        ),
        Output::Table => {
            let mut text =
                format!("{summary}: would revoke {affected_count} token(s); nothing was changed\n");
            if !affected.is_empty() {
                text.push_str(&table::token_header());
                text.push('\n');
                for token in affected {
                    text.push_str(&table::token_row(token, now));
                    text.push('\n');
                }
            }
            if (affected.len() as u64) < affected_count {
                text.push_str(&format!("(the first {} shown)\n", affected.len()));
            }
            text
        }
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CliError::from_output)
}

/// JSON as grpcurl prints it: indented by two spaces.
pub fn pretty(value: &Value) -> Result<String, CliError> {
    serde_json::to_string_pretty(value).map_err(|e| CliError::Failed(format!("writing JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that accepts `capacity` lines, then reports its reader gone.
    struct ClosingPipe {
        lines: usize,
        capacity: usize,
    }

    impl Write for ClosingPipe {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.lines >= self.capacity {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            self.lines += buf.iter().filter(|&&b| b == b'\n').count();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn printer() -> Printer<u64> {
        Printer {
            field: "items",
            header: || "N".into(),
            row: |n, _| n.to_string(),
            json: |n| Value::from(*n),
        }
    }

    /// A listing that never ends: `--all` must stop when its reader does,
    /// having asked for no more pages than it printed.
    #[tokio::test]
    async fn following_an_endless_listing_stops_with_its_reader() {
        let mut pipe = ClosingPipe {
            lines: 0,
            capacity: 25,
        };
        let mut fetched = 0u64;
        let outcome = list(
            &mut pipe,
            Output::Json,
            true,
            String::new(),
            &printer(),
            async |_| {
                fetched += 1;
                Ok(Page {
                    items: (0..10).map(|i| fetched * 10 + i).collect(),
                    next_page_token: format!("page-{fetched}"),
                })
            },
        )
        .await;
        assert!(
            matches!(outcome, Err(CliError::OutputClosed)),
            "{outcome:?}"
        );
        assert_eq!(fetched, 3);
    }

    #[tokio::test]
    async fn a_page_token_handed_back_unchanged_stops_the_listing() {
        let mut out = Vec::new();
        let mut fetched = 0;
        let outcome = list(
            &mut out,
            Output::Table,
            true,
            String::new(),
            &printer(),
            async |_| {
                fetched += 1;
                Ok(Page {
                    items: vec![1],
                    next_page_token: "same".into(),
                })
            },
        )
        .await;
        assert!(matches!(outcome, Err(CliError::Failed(_))), "{outcome:?}");
        assert_eq!(fetched, 2);
        assert_eq!(String::from_utf8(out).unwrap(), "N\n1\n1\n");
    }
}
