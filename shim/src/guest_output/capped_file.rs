//! A log file the guest fills but cannot grow without bound: once the next line would take it
//! past its cap it is renamed to `<name>.1` (replacing the previous one) and started afresh.
//! So it never holds more than the cap, two files at most, and the newest output is always in
//! the file readers open (they read its end with a seek: `hypervisor::log_tail`).

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

/// The rotated part of `path`: `<path>.1`.
pub fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".1");
    PathBuf::from(name)
}

#[derive(Debug)]
pub struct CappedFile {
    path: PathBuf,
    file: tokio::fs::File,
    written: u64,
    cap: u64,
}

async fn create(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .await
}

impl CappedFile {
    /// Creates (or empties) `path`; it will hold at most `cap` bytes.
    pub async fn create(path: &Path, cap: u64) -> std::io::Result<CappedFile> {
        Ok(CappedFile {
            file: create(path).await?,
            path: path.to_path_buf(),
            written: 0,
            cap,
        })
    }

    /// Appends each line with a newline, rotating whenever the next would not fit. A line
    /// longer than the whole cap keeps its start.
    pub async fn write_lines<S: AsRef<str>>(&mut self, lines: &[S]) -> std::io::Result<()> {
        let cap = usize::try_from(self.cap).unwrap_or(usize::MAX);
        let mut batch: Vec<u8> = Vec::new();
        for line in lines {
            let text = line.as_ref().as_bytes();
            let text = &text[..text.len().min(cap.saturating_sub(1))];
            let len = text.len() as u64 + 1;
            if self.written + batch.len() as u64 + len > self.cap {
                self.file.write_all(&batch).await?;
                batch.clear();
                self.rotate().await?;
            }
            batch.extend_from_slice(text);
            batch.push(b'\n');
        }
        self.file.write_all(&batch).await?;
        self.written += batch.len() as u64;
        self.file.flush().await
    }

    async fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush().await?;
        tokio::fs::rename(&self.path, rotated(&self.path)).await?;
        self.file = create(&self.path).await?;
        self.written = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(p: &Path) -> u64 {
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
    }

    #[tokio::test]
    async fn never_more_than_its_cap_and_the_newest_output_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let mut f = CappedFile::create(&path, 1000).await.expect("create");
        for n in 0..5000 {
            let lines: Vec<String> = (0..7).map(|i| format!("line {n}-{i}")).collect();
            f.write_lines(&lines).await.expect("write");
            assert!(size(&path) <= 1000, "{}", size(&path));
            assert!(size(&rotated(&path)) <= 1000);
        }
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.ends_with("line 4999-6\n"), "{text}");
        // Whole lines only, in both parts.
        let old = std::fs::read_to_string(rotated(&path)).expect("read .1");
        assert!(old.lines().all(|l| l.starts_with("line ")), "{old}");
        assert!(text.lines().all(|l| l.starts_with("line ")), "{text}");
        // Just two files.
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 2);
    }

    #[tokio::test]
    async fn a_line_longer_than_the_cap_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.log");
        let mut f = CappedFile::create(&path, 10).await.expect("create");
        f.write_lines(&["a".repeat(50)]).await.expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "aaaaaaaaa\n");
    }
}
