//! The layers an I/O is passing through, innermost last: who to call back,
//! and what each layer must account, when the I/O completes there.
//!
//! Slots are kept between uses and filled in place. A `Vec::push` of the
//! 48-byte frame built it in a stack temporary (the value must outlive the
//! push's possible reallocation call) and then copied it with 16-byte
//! loads over 8-byte stores: a failed store-to-load forward that took a
//! third of every submit on the measured stacks.

use std::rc::Rc;

use crate::channel::BdevChannel;
use crate::io::IoDone;

pub(crate) struct Frame {
    pub done: Rc<dyn IoDone>,
    pub ctx: u64,
    pub channel: Rc<BdevChannel>,
    pub start: u64,
    pub offset: u64,
    /// What this frame's module left for its `completed` hook; not 0 when
    /// it passed the I/O through (`IoChannel::submit_through`): a bdev
    /// below holds it without a frame of its own, and this frame is not
    /// that bdev's module's to lend again.
    pub layer: u64,
}

/// A stack whose slots are kept and filled in place (generic for tests).
pub(crate) struct Frames<T = Frame> {
    /// `slots[..depth]` are the frames; the rest are kept empty for reuse.
    slots: Vec<Option<T>>,
    depth: usize,
}

impl<T> Frames<T> {
    pub fn new() -> Frames<T> {
        Frames {
            slots: (0..4).map(|_| None).collect(),
            depth: 0,
        }
    }

    /// Pushes the frame `make` builds, straight into its slot.
    #[inline]
    pub fn push(&mut self, make: impl FnOnce() -> T) {
        if self.depth == self.slots.len() {
            self.grow();
        }
        if let Some(slot) = self.slots.get_mut(self.depth) {
            // Swapped in, the old (empty) value dropped after: no call can
            // come between building the frame and storing it.
            let old = slot.replace(make());
            self.depth += 1;
            drop(old);
        }
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        self.slots.push(None);
    }

    /// The innermost frame. (With no frame, the index wraps past the end:
    /// the bounds check is also the depth's.)
    #[inline]
    pub fn top_mut(&mut self) -> Option<&mut T> {
        self.slots.get_mut(self.depth.wrapping_sub(1))?.as_mut()
    }

    /// The innermost frame.
    #[inline]
    pub fn top(&self) -> Option<&T> {
        self.slots.get(self.depth.wrapping_sub(1))?.as_ref()
    }

    /// The innermost frame, removed.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        self.depth = self.depth.checked_sub(1)?;
        self.slots.get_mut(self.depth)?.take()
    }

    pub fn clear(&mut self) {
        while self.pop().is_some() {}
        self.depth = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_what_was_pushed_last_first_at_any_depth() {
        let token = Rc::new(());
        let mut f: Frames<(u64, u64, Rc<()>)> = Frames::new();
        for round in 0..2 {
            for i in 0..9 {
                f.push(|| (i, round, token.clone()));
            }
            for i in (0..9).rev() {
                assert_eq!(f.pop().map(|(i, r, _)| (i, r)), Some((i, round)));
            }
            assert!(f.pop().is_none() && f.pop().is_none());
        }
        f.push(|| (1, 0, token.clone()));
        f.push(|| (2, 0, token.clone()));
        f.clear();
        assert!(f.pop().is_none());
        assert_eq!(Rc::strong_count(&token), 1, "frames dropped, none leaked");
        f.push(|| (3, 0, token.clone()));
        assert_eq!(f.pop().map(|(i, _, _)| i), Some(3));
    }
}
