//! The `dovecot-keywords` file: which keyword each lower-case info letter stands for.
//!
//! Owns reading it (`<index> <name>` lines, index 0 = `a` ... 25 = `z`, so at most 26 keywords
//! per Maildir) and adding names to it under its dotlock (`dovecot-keywords.lock`, written and
//! renamed over the file, as Dovecot does). Never renumbers or removes an entry: letters already
//! in file names keep their meaning. Letters the file does not name are carried through renames
//! verbatim by the caller, so nothing is lost.

use super::uidlist::{self, UidlistLock};
use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

pub const KEYWORDS_NAME: &str = "dovecot-keywords";
/// How many keyword letters Maildir has (`a`..`z`).
pub const LETTERS: usize = 26;
/// How long to wait for `dovecot-keywords.lock` (a stale one is taken over before that).
const LOCK_WAIT: Duration = Duration::from_secs(uidlist::STALE_AFTER.as_secs() + 10);

/// Keyword names and the mapping between info letters and bits of `MessageInfo::keywords`.
/// Bits are stable for the life of the value: a reload only adds names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keywords {
    /// Names in bit order.
    pub names: Vec<String>,
    /// `letter_of_bit[bit]` = letter index (0 = `a`) of keyword `bit`.
    letter_of_bit: Vec<u8>,
    /// `bit_of_letter[l - 'a']` = bit of letter `l`, when the file names it.
    bit_of_letter: [Option<u8>; LETTERS],
}

impl Keywords {
    /// Read `<maildir>/dovecot-keywords`; none when it does not exist. Malformed lines are skipped.
    pub fn read(maildir: &Path) -> io::Result<Keywords> {
        let mut keywords = Keywords::default();
        keywords.merge(&read_entries(maildir)?);
        Ok(keywords)
    }

    #[cfg(test)]
    pub fn parse(text: &str) -> Keywords {
        let mut keywords = Keywords::default();
        keywords.merge(&parse_entries(text));
        keywords
    }

    /// Re-read the file, adding names others added; bits already given out keep their meaning.
    pub fn reload(&mut self, maildir: &Path) -> io::Result<()> {
        let entries = read_entries(maildir)?;
        self.merge(&entries);
        Ok(())
    }

    /// Take in `(letter index, name)` entries: known names follow their letter, new names get
    /// the next bit.
    fn merge(&mut self, entries: &[(u8, String)]) {
        for (letter, name) in entries {
            let bit = match self.names.iter().position(|n| n == name) {
                Some(bit) => bit,
                None if self.names.len() < 64 => {
                    self.names.push(name.clone());
                    self.letter_of_bit.push(*letter);
                    self.names.len() - 1
                }
                None => continue,
            };
            let Ok(bit_u8) = u8::try_from(bit) else {
                continue;
            };
            let old_letter = usize::from(self.letter_of_bit[bit]);
            if self.bit_of_letter[old_letter] == Some(bit_u8) {
                self.bit_of_letter[old_letter] = None;
            }
            self.letter_of_bit[bit] = *letter;
            self.bit_of_letter[usize::from(*letter)] = Some(bit_u8);
        }
    }

    /// The bit of keyword `name`, if the mailbox has it.
    pub fn bit_of(&self, name: &str) -> Option<u32> {
        let bit = self.names.iter().position(|n| n == name)?;
        u32::try_from(bit).ok()
    }

    /// The keyword bits the info letters in `letters` stand for.
    pub fn bits(&self, letters: &str) -> u64 {
        letters
            .bytes()
            .filter(u8::is_ascii_lowercase)
            .filter_map(|l| self.bit_of_letter[usize::from(l - b'a')])
            .fold(0, |bits, bit| bits | 1 << bit)
    }

    /// The info letters of the keyword bits in `bits` (bits without a letter are skipped).
    pub fn letters(&self, bits: u64) -> String {
        self.letter_of_bit
            .iter()
            .enumerate()
            .filter(|(bit, _)| bits & (1 << bit) != 0)
            .map(|(_, letter)| char::from(b'a' + letter))
            .collect()
    }

    /// True when `letter` stands for a keyword we know (so its presence is ours to manage).
    pub fn knows_letter(&self, letter: char) -> bool {
        letter.is_ascii_lowercase()
            && self.bit_of_letter[usize::from(letter as u8 - b'a')].is_some()
    }
}

/// Add `name` to `<maildir>/dovecot-keywords` unless it is there, under the file's dotlock.
/// `Ok(false)` when all 26 letters are taken. The caller reloads to learn the letter.
pub fn add(maildir: &Path, name: &str) -> io::Result<bool> {
    if name.is_empty() || name.contains(['\n', '\r']) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad keyword"));
    }
    let lock = UidlistLock::acquire_for(
        &maildir.join(KEYWORDS_NAME),
        LOCK_WAIT,
        uidlist::STALE_AFTER,
    )?;
    let mut entries = read_entries(maildir)?;
    if entries.iter().any(|(_, n)| n == name) {
        return Ok(true);
    }
    let Some(free) = (0..LETTERS as u8).find(|l| entries.iter().all(|(used, _)| used != l)) else {
        return Ok(false);
    };
    entries.push((free, name.to_string()));
    entries.sort_by_key(|(letter, _)| *letter);
    let text: String = entries
        .iter()
        .map(|(letter, name)| format!("{letter} {name}\n"))
        .collect();
    lock.replace_with(text.as_bytes())?;
    Ok(true)
}

fn read_entries(maildir: &Path) -> io::Result<Vec<(u8, String)>> {
    match fs::read_to_string(maildir.join(KEYWORDS_NAME)) {
        Ok(text) => Ok(parse_entries(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// `(letter index, name)` of each well-formed line; the first line for a letter or name wins.
fn parse_entries(text: &str) -> Vec<(u8, String)> {
    let mut entries: Vec<(u8, String)> = Vec::new();
    for line in text.lines() {
        let Some((index, name)) = line.split_once(' ') else {
            continue;
        };
        let Ok(index) = index.parse::<u8>() else {
            continue;
        };
        let name = name.trim_end_matches('\r');
        let taken = entries.iter().any(|(l, n)| *l == index || n == name);
        if usize::from(index) >= LETTERS || name.is_empty() || taken {
            continue;
        }
        entries.push((index, name.to_string()));
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::maildir::tests::TempDir;

    #[test]
    fn maps_letters_to_bits_in_file_order() {
        let kw = Keywords::parse("0 $Forwarded\n3 Junk\nbad line\n3 Dup\n30 TooFar\n1 $MDNSent\n");
        assert_eq!(kw.names, ["$Forwarded", "Junk", "$MDNSent"]);
        assert_eq!(kw.bits("a"), 1);
        assert_eq!(kw.bits("d"), 2);
        assert_eq!(kw.bits("b"), 4);
        assert_eq!(kw.bits("PabdzS"), 7);
        assert_eq!(kw.bits("c"), 0);
        assert_eq!(kw.letters(7), "adb");
        assert!(kw.knows_letter('d') && !kw.knows_letter('c') && !kw.knows_letter('S'));
    }

    #[test]
    fn add_writes_dovecot_format_and_keeps_bits_stable() {
        let dir = TempDir::new();
        fs::write(dir.path().join(KEYWORDS_NAME), "1 Work\n").unwrap();
        let mut kw = Keywords::read(dir.path()).unwrap();
        assert!(add(dir.path(), "Home").unwrap());
        assert!(add(dir.path(), "Work").unwrap());
        let text = fs::read_to_string(dir.path().join(KEYWORDS_NAME)).unwrap();
        assert_eq!(text, "0 Home\n1 Work\n");
        assert!(!dir.path().join("dovecot-keywords.lock").exists());
        kw.reload(dir.path()).unwrap();
        assert_eq!(kw.names, ["Work", "Home"]);
        assert_eq!(kw.bits("a"), 2);
        assert_eq!(kw.bits("b"), 1);
    }

    #[test]
    fn at_most_26_keywords() {
        let dir = TempDir::new();
        for n in 0..26 {
            assert!(add(dir.path(), &format!("k{n}")).unwrap());
        }
        assert!(!add(dir.path(), "one-too-many").unwrap());
        assert!(add(dir.path(), "k25").unwrap());
        let kw = Keywords::read(dir.path()).unwrap();
        assert_eq!(kw.names.len(), 26);
        assert_eq!(kw.bits("z"), 1 << 25);
        assert!(add(dir.path(), "bad\nname").is_err());
    }
}
