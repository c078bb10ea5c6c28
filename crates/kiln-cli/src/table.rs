//! Plain text tables with columns padded to their widest cell.

use crate::api_client::CliError;
use std::io::Write;

/// A table being built.
#[derive(Debug)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Table {
        Table { header: header.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    /// Adds a row (one cell per column).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text; the last column is not padded.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            let line: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, c)| if i == last { c.clone() } else { format!("{c:<w$}", w = widths[i]) })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table.
    pub fn print(&self) -> Result<(), CliError> {
        std::io::stdout().lock().write_all(self.render().as_bytes()).map_err(CliError::Stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_to_the_widest_cell() {
        let mut t = Table::new(&["NAME", "STATE"]);
        t.row(vec!["a-long-name".into(), "running".into()]);
        t.row(vec!["b".into(), "stopped".into()]);
        assert_eq!(t.render(), "NAME         STATE\na-long-name  running\nb            stopped\n");
    }
}
