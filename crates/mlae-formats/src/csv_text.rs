//! One CSV record as text, for the tools that write their CSV a line at a time (the report's
//! tables, `mlae-cli predict --format csv`), so that every CSV the project writes quotes by
//! the `csv` crate's rule (RFC 4180: a field is quoted when it holds a comma, a quote or a
//! line break) rather than by a copy of it.

/// The fields as one CSV line, with its line terminator (`\n`).
pub fn csv_record<I, F>(fields: I) -> String
where
    I: IntoIterator<Item = F>,
    F: AsRef<[u8]>,
{
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
    w.write_record(fields).expect("writing to memory");
    String::from_utf8(w.into_inner().expect("writing to memory")).expect("fields are UTF-8")
}

#[cfg(test)]
mod tests {
    use super::csv_record;

    #[test]
    fn fields_are_quoted_only_when_a_reader_would_split_them() {
        assert_eq!(csv_record(["mlae (demo-search)", "0.9310", ""]), "mlae (demo-search),0.9310,\n");
        assert_eq!(csv_record(["lr=0.001, p=0.5"]), "\"lr=0.001, p=0.5\"\n");
        assert_eq!(csv_record(["say \"hi\""]), "\"say \"\"hi\"\"\"\n");
        assert_eq!(csv_record(["a\rb", "a\nb"]), "\"a\rb\",\"a\nb\"\n");
    }

    #[test]
    fn a_record_reads_back_as_its_fields() {
        let fields = ["a, b", "say \"hi\"", "", "x\ny"];
        let line = csv_record(fields);
        let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(line.as_bytes());
        let back: Vec<String> = r.records().next().unwrap().unwrap().iter().map(String::from).collect();
        assert_eq!(back, fields);
    }
}
