//! THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 sections 3 and 4, the latter the
//! JWZ algorithm with the RFC's rules) over precomputed [`MessageKeys`], and the THREAD
//! response syntax `(1)(2 3 (4)(5))`.
//!
//! Works on message numbers only (sequence numbers or UIDs, as the caller picks); never reads
//! messages, never recurses on message-controlled depth without an explicit stack.

use std::collections::HashMap;

use super::sort::MessageKeys;

/// One thread node: a message (its number) or a dummy standing for a missing parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadNode {
    pub id: Option<u32>,
    pub children: Vec<ThreadNode>,
}

/// Write the thread list as in `* THREAD` responses (without the `* THREAD ` prefix).
pub fn write_threads(out: &mut Vec<u8>, threads: &[ThreadNode]) {
    for t in threads {
        out.push(b'(');
        write_node(out, t);
        out.push(b')');
    }
}

fn write_node(out: &mut Vec<u8>, start: &ThreadNode) {
    // Follow single-child chains iteratively: "a b c" needs no parentheses.
    let mut node = start;
    loop {
        if let Some(id) = node.id {
            if !std::ptr::eq(node, start) {
                out.push(b' ');
            }
            out.extend_from_slice(id.to_string().as_bytes());
        }
        match node.children.as_slice() {
            [only] if node.id.is_some() => node = only,
            children => {
                if !children.is_empty() && node.id.is_some() {
                    out.push(b' ');
                }
                for child in children {
                    out.push(b'(');
                    write_node(out, child);
                    out.push(b')');
                }
                return;
            }
        }
    }
}

/// Which number identifies a message in the output.
fn number(m: &MessageKeys, by_uid: bool) -> u32 {
    if by_uid {
        m.uid
    } else {
        m.seq
    }
}

/// THREAD=ORDEREDSUBJECT: messages grouped by base subject; in each group the earliest is
/// the parent of all the others; groups ordered by their first message's sent date.
pub fn ordered_subject(messages: &[MessageKeys], by_uid: bool) -> Vec<ThreadNode> {
    let mut order: Vec<&MessageKeys> = messages.iter().collect();
    order.sort_by(|a, b| (&a.subject, a.date, a.seq).cmp(&(&b.subject, b.date, b.seq)));
    let mut threads: Vec<(i64, u32, ThreadNode)> = Vec::new();
    let mut current_subject: Option<&str> = None;
    for m in order {
        let node = ThreadNode {
            id: Some(number(m, by_uid)),
            children: Vec::new(),
        };
        match (current_subject, threads.last_mut()) {
            (Some(s), Some((_, _, root))) if s == m.subject => root.children.push(node),
            _ => {
                current_subject = Some(&m.subject);
                threads.push((m.date, m.seq, node));
            }
        }
    }
    threads.sort_by_key(|&(date, seq, _)| (date, seq));
    threads.into_iter().map(|(_, _, t)| t).collect()
}

/// Arena container of the REFERENCES algorithm.
#[derive(Clone, Debug, Default)]
struct Container {
    message: Option<usize>,
    parent: Option<usize>,
    children: Vec<usize>,
}

struct Arena<'m> {
    messages: &'m [MessageKeys],
    nodes: Vec<Container>,
}

impl Arena<'_> {
    fn new_container(&mut self, message: Option<usize>) -> usize {
        self.nodes.push(Container {
            message,
            ..Container::default()
        });
        self.nodes.len() - 1
    }

    /// Whether `a` is `b` or one of its ancestors.
    fn is_ancestor(&self, a: usize, b: usize) -> bool {
        if a != b && self.nodes[a].children.is_empty() {
            return false; // only containers with children are anyone's ancestor
        }
        let mut cur = Some(b);
        while let Some(c) = cur {
            if c == a {
                return true;
            }
            cur = self.nodes[c].parent;
        }
        false
    }

    fn unlink(&mut self, child: usize) {
        if let Some(p) = self.nodes[child].parent.take() {
            self.nodes[p].children.retain(|&c| c != child);
        }
    }

    fn link(&mut self, parent: usize, child: usize) {
        self.unlink(child);
        self.nodes[child].parent = Some(parent);
        self.nodes[parent].children.push(child);
    }

    /// Sent date of a container: its message's, or for a dummy its first child's.
    fn date(&self, c: usize) -> (i64, u32) {
        let mut cur = c;
        loop {
            if let Some(m) = self.nodes[cur].message {
                let m = &self.messages[m];
                return (m.date, m.seq);
            }
            match self.nodes[cur].children.first() {
                Some(&first) => cur = first,
                None => return (i64::MAX, u32::MAX),
            }
        }
    }

    /// The message whose subject stands for a container (a dummy's first child's).
    fn subject_message(&self, c: usize) -> Option<&MessageKeys> {
        let node = &self.nodes[c];
        let m = node
            .message
            .or_else(|| node.children.first().and_then(|&f| self.nodes[f].message))?;
        Some(&self.messages[m])
    }

    fn sort_siblings(&mut self, list: &mut [usize]) {
        list.sort_by_key(|&c| self.date(c));
    }
}

/// THREAD=REFERENCES (RFC 5256 section 3).
pub fn references(messages: &[MessageKeys], by_uid: bool) -> Vec<ThreadNode> {
    let mut arena = Arena {
        messages,
        nodes: Vec::with_capacity(messages.len() * 2),
    };
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut in_order: Vec<usize> = (0..messages.len()).collect();
    in_order.sort_by_key(|&i| messages[i].seq);

    // Step 1: link messages by Message-ID and References.
    for mi in in_order {
        let m = &messages[mi];
        let own = match m.message_id.as_deref() {
            Some(id) => match ids.get(id) {
                Some(&c) if arena.nodes[c].message.is_none() => {
                    arena.nodes[c].message = Some(mi);
                    c
                }
                Some(_) => arena.new_container(Some(mi)), // duplicate id: treat as having none
                None => {
                    let c = arena.new_container(Some(mi));
                    ids.insert(id, c);
                    c
                }
            },
            None => arena.new_container(Some(mi)),
        };
        let mut prev: Option<usize> = None;
        for r in &m.references {
            let c = match ids.get(r.as_str()) {
                Some(&c) => c,
                None => {
                    let c = arena.new_container(None);
                    ids.insert(r, c);
                    c
                }
            };
            if let Some(p) = prev {
                if arena.nodes[c].parent.is_none() && !arena.is_ancestor(c, p) {
                    arena.link(p, c);
                }
            }
            prev = Some(c);
        }
        // Step 1B: the last reference is the parent. An existing parent is dropped even when
        // the new link would make a loop (the message then becomes a root).
        arena.unlink(own);
        if let Some(p) = prev.filter(|&p| !arena.is_ancestor(own, p)) {
            arena.link(p, own);
        }
    }

    // Step 2: the root set.
    let roots: Vec<usize> = (0..arena.nodes.len())
        .filter(|&c| arena.nodes[c].parent.is_none())
        .collect();
    // Step 4: prune dummies.
    let mut roots = prune(&mut arena, roots);
    // Step 5: sort the root set (children first, so dummies date by their first child).
    sort_all_children(&mut arena, &roots);
    arena.sort_siblings(&mut roots);
    // Step 6: group the root set by base subject.
    let roots = merge_by_subject(&mut arena, roots);
    // Step 7: sort siblings at every level again after merging.
    sort_all_children(&mut arena, &roots);
    roots
        .into_iter()
        .map(|r| to_node(&arena, r, by_uid))
        .collect()
}

/// RFC 5256 step 4: delete empty dummies, promote dummies' children (at the root only when
/// the dummy has a single child). Iterative: children are pruned before their parents.
fn prune(arena: &mut Arena<'_>, roots: Vec<usize>) -> Vec<usize> {
    for c in postorder(arena, &roots) {
        let children = std::mem::take(&mut arena.nodes[c].children);
        let mut kept = Vec::with_capacity(children.len());
        for child in children {
            if arena.nodes[child].message.is_some() {
                kept.push(child);
            } else {
                // A pruned dummy below the root: its (already pruned) children move up.
                let grandchildren = std::mem::take(&mut arena.nodes[child].children);
                for &g in &grandchildren {
                    arena.nodes[g].parent = Some(c);
                }
                kept.extend(grandchildren);
            }
        }
        arena.nodes[c].children = kept;
    }
    let mut out = Vec::with_capacity(roots.len());
    for r in roots {
        if arena.nodes[r].message.is_some() || arena.nodes[r].children.len() > 1 {
            out.push(r);
        } else if let Some(&only) = arena.nodes[r].children.first() {
            arena.nodes[only].parent = None;
            arena.nodes[r].children.clear();
            out.push(only);
        }
    }
    out
}

/// Every container under `roots`, each after all its descendants.
fn postorder(arena: &Arena<'_>, roots: &[usize]) -> Vec<usize> {
    let mut stack: Vec<usize> = roots.to_vec();
    let mut preorder = Vec::new();
    while let Some(c) = stack.pop() {
        preorder.push(c);
        stack.extend(arena.nodes[c].children.iter().copied());
    }
    preorder.reverse();
    preorder
}

fn sort_all_children(arena: &mut Arena<'_>, roots: &[usize]) {
    for c in postorder(arena, roots) {
        let mut children = std::mem::take(&mut arena.nodes[c].children);
        arena.sort_siblings(&mut children);
        arena.nodes[c].children = children;
    }
}

/// RFC 5256 step 6: merge root threads whose base subjects are equal.
fn merge_by_subject(arena: &mut Arena<'_>, roots: Vec<usize>) -> Vec<usize> {
    let mut table: HashMap<String, usize> = HashMap::new();
    for &r in &roots {
        let Some(m) = arena.subject_message(r) else {
            continue;
        };
        if m.subject.is_empty() {
            continue;
        }
        let (subject, reply) = (m.subject.clone(), m.subject_is_reply);
        let is_dummy = arena.nodes[r].message.is_none();
        match table.get(&subject) {
            None => {
                table.insert(subject, r);
            }
            Some(&old) => {
                let old_dummy = arena.nodes[old].message.is_none();
                let old_reply = arena
                    .subject_message(old)
                    .is_some_and(|m| m.subject_is_reply);
                if (is_dummy && !old_dummy) || (!old_dummy && old_reply && !reply) {
                    table.insert(subject, r);
                }
            }
        }
    }
    let mut result: Vec<Option<usize>> = roots.iter().map(|&r| Some(r)).collect();
    for i in 0..result.len() {
        let Some(r) = result[i] else { continue };
        let Some(m) = arena.subject_message(r) else {
            continue;
        };
        if m.subject.is_empty() {
            continue;
        }
        let (subject, reply) = (m.subject.clone(), m.subject_is_reply);
        let Some(&other) = table.get(&subject) else {
            continue;
        };
        if other == r {
            continue;
        }
        let Some(other_pos) = result.iter().position(|&x| x == Some(other)) else {
            continue;
        };
        let this_dummy = arena.nodes[r].message.is_none();
        let other_dummy = arena.nodes[other].message.is_none();
        let other_reply = arena
            .subject_message(other)
            .is_some_and(|m| m.subject_is_reply);
        if this_dummy && other_dummy {
            let children = std::mem::take(&mut arena.nodes[r].children);
            for c in children {
                arena.nodes[c].parent = None;
                arena.link(other, c);
            }
            result[i] = None;
        } else if other_dummy {
            arena.link(other, r);
            result[i] = None;
        } else if this_dummy {
            arena.link(r, other);
            result[other_pos] = None;
            table.insert(subject, r);
        } else if !other_reply && reply {
            arena.link(other, r);
            result[i] = None;
        } else if other_reply && !reply {
            arena.link(r, other);
            result[other_pos] = None;
            table.insert(subject, r);
        } else {
            let dummy = arena.new_container(None);
            arena.link(dummy, other);
            arena.link(dummy, r);
            result[other_pos] = Some(dummy);
            result[i] = None;
            table.insert(subject, dummy);
        }
    }
    result.into_iter().flatten().collect()
}

fn to_node(arena: &Arena<'_>, root: usize, by_uid: bool) -> ThreadNode {
    // Build bottom-up with an explicit stack so deep reference chains cannot overflow.
    let order = postorder(arena, &[root]);
    let mut built: HashMap<usize, ThreadNode> = HashMap::with_capacity(order.len());
    for c in order {
        let node = &arena.nodes[c];
        let children = node
            .children
            .iter()
            .filter_map(|ch| built.remove(ch))
            .collect();
        let id = node.message.map(|m| number(&arena.messages[m], by_uid));
        built.insert(c, ThreadNode { id, children });
    }
    built.remove(&root).unwrap_or(ThreadNode {
        id: None,
        children: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::search::MessageMeta;

    /// A message: sequence number, Message-ID, References, subject, sent date (seconds).
    fn msg(seq: u32, id: &str, refs: &str, subject: &str, date: i64) -> MessageKeys {
        let mut header = format!("Subject: {subject}\r\n");
        if !id.is_empty() {
            header.push_str(&format!("Message-ID: <{id}>\r\n"));
        }
        if !refs.is_empty() {
            let refs: Vec<String> = refs.split(' ').map(|r| format!("<{r}>")).collect();
            header.push_str(&format!("References: {}\r\n", refs.join(" ")));
        }
        let meta = MessageMeta {
            seq,
            uid: seq + 100,
            internal_date: date,
            ..MessageMeta::default()
        };
        MessageKeys::new(header.as_bytes(), &meta)
    }

    fn text(threads: &[ThreadNode]) -> String {
        let mut out = Vec::new();
        write_threads(&mut out, threads);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_rfc5256_syntax() {
        let leaf = |id| ThreadNode {
            id: Some(id),
            children: vec![],
        };
        let t = vec![
            leaf(2),
            ThreadNode {
                id: Some(3),
                children: vec![ThreadNode {
                    id: Some(6),
                    children: vec![leaf(4), leaf(23)],
                }],
            },
            ThreadNode {
                id: None,
                children: vec![leaf(7), leaf(9)],
            },
        ];
        assert_eq!(text(&t), "(2)(3 6 (4)(23))((7)(9))");
    }

    #[test]
    fn ordered_subject_groups_by_base_subject() {
        let msgs = [
            msg(1, "a", "", "hello", 10),
            msg(2, "b", "", "Re: other", 5),
            msg(3, "c", "", "Re: hello", 30),
            msg(4, "d", "", "hello", 20),
            msg(5, "e", "", "other", 40),
        ];
        assert_eq!(text(&ordered_subject(&msgs, false)), "(2 5)(1 (4)(3))");
        assert_eq!(
            text(&ordered_subject(&msgs, true)),
            "(102 105)(101 (104)(103))"
        );
    }

    #[test]
    fn references_builds_trees_and_dummies() {
        let msgs = [
            msg(1, "1", "", "root", 10),
            msg(2, "2", "1", "Re: root", 20),
            msg(3, "3", "1 2", "Re: root", 30),
            msg(4, "4", "1", "Re: root", 40),
            // Two replies to a message we do not have: a dummy with two children.
            msg(5, "5", "missing", "Re: lost", 50),
            msg(6, "6", "missing", "Re: lost", 60),
            // Unrelated, no id at all.
            msg(7, "", "", "alone", 5),
        ];
        assert_eq!(text(&references(&msgs, false)), "(7)(1 (2 3)(4))((5)(6))");
    }

    #[test]
    fn references_survive_loops_duplicates_and_subject_merges() {
        let msgs = [
            // a and b reference each other: no loop may be created.
            msg(1, "a", "b", "loop", 10),
            msg(2, "b", "a", "Re: loop", 20),
            // Duplicate Message-ID: the second is treated as having none.
            msg(3, "a", "", "dup", 30),
            // Same base subject, no references: merged under the non-reply.
            msg(4, "x", "", "topic", 40),
            msg(5, "y", "", "Re: topic", 50),
        ];
        assert_eq!(text(&references(&msgs, false)), "(2 1)(3)(4 5)");
    }

    #[test]
    fn a_parent_that_would_make_a_loop_is_dropped() {
        // imaptest thread: c's old parent a (from b's References) is dropped, b stays under c.
        let msgs = [
            msg(1, "a", "", "", 30),
            msg(2, "b", "a c", "", 10),
            msg(3, "c", "b", "", 20),
        ];
        assert_eq!(text(&references(&msgs, false)), "(3 2)(1)");
    }

    #[test]
    fn deep_reference_chains_do_not_overflow() {
        let n = 20_000u32;
        let refs: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let msgs = [
            msg(1, "last", &refs.join(" "), "deep", 1),
            msg(2, "m0", "", "deep", 0),
        ];
        assert_eq!(text(&references(&msgs, false)), "(2 1)");
    }
}
