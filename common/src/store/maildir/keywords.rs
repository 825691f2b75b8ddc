//! The `dovecot-keywords` file: which keyword each lower-case info letter stands for.
//!
//! Owns reading it (`<index> <name>` lines, index 0 = `a` ... 25 = `z`). Never writes it: keyword
//! letters we meet are carried through renames verbatim, so nothing is lost without writing.

use std::fs;
use std::io;
use std::path::Path;

pub const KEYWORDS_NAME: &str = "dovecot-keywords";

/// Keyword names and the mapping from info letters to bits of `MessageInfo::keywords`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keywords {
    /// Names in bit order.
    pub names: Vec<String>,
    /// `bit_of_letter[l - 'a']` = bit of letter `l`, when the file names it.
    bit_of_letter: [Option<u8>; 26],
}

impl Keywords {
    /// Read `<maildir>/dovecot-keywords`; none when it does not exist. Malformed lines are skipped.
    pub fn read(maildir: &Path) -> io::Result<Keywords> {
        match fs::read_to_string(maildir.join(KEYWORDS_NAME)) {
            Ok(text) => Ok(Keywords::parse(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Keywords::default()),
            Err(e) => Err(e),
        }
    }

    pub fn parse(text: &str) -> Keywords {
        let mut keywords = Keywords::default();
        for line in text.lines() {
            let Some((index, name)) = line.split_once(' ') else {
                continue;
            };
            let Ok(index) = index.parse::<usize>() else {
                continue;
            };
            let name = name.trim_end_matches('\r');
            if index >= 26 || name.is_empty() || keywords.bit_of_letter[index].is_some() {
                continue;
            }
            keywords.bit_of_letter[index] = u8::try_from(keywords.names.len()).ok();
            keywords.names.push(name.to_string());
        }
        keywords
    }

    /// The keyword bits the info letters in `letters` stand for.
    pub fn bits(&self, letters: &str) -> u64 {
        letters
            .bytes()
            .filter(u8::is_ascii_lowercase)
            .filter_map(|l| self.bit_of_letter[usize::from(l - b'a')])
            .fold(0, |bits, bit| bits | 1 << bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_letters_to_bits_in_file_order() {
        let kw = Keywords::parse("0 $Forwarded\n3 Junk\nbad line\n3 Dup\n30 TooFar\n1 $MDNSent\n");
        assert_eq!(kw.names, ["$Forwarded", "Junk", "$MDNSent"]);
        assert_eq!(kw.bits("a"), 1);
        assert_eq!(kw.bits("d"), 2);
        assert_eq!(kw.bits("b"), 4);
        assert_eq!(kw.bits("PabdzS"), 7);
        assert_eq!(kw.bits("c"), 0);
    }
}
