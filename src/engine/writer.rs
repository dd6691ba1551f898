// SPDX-License-Identifier: GPL-2.0

//! Text output into the fixed buffers device-mapper and sysfs hand over.

use core::fmt;

/// A writer into a fixed byte buffer that always leaves it NUL-terminated.
///
/// Device-mapper hands `status` a buffer of `maxlen` bytes; text that does not fit is cut, and
/// the write reports an error so the caller can tell, the way `DMEMIT` stops at `maxlen`.
pub struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> SliceWriter<'a> {
    /// Starts writing at the beginning of `buf`, which becomes an empty string.
    pub fn new(buf: &'a mut [u8]) -> Self {
        if let Some(first) = buf.first_mut() {
            *first = 0;
        }
        Self { buf, len: 0 }
    }

    /// The text written so far, without the terminating NUL.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // One byte is always kept for the terminating NUL.
        let room = self.buf.len().saturating_sub(self.len + 1);
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if let Some(end) = self.buf.get_mut(self.len) {
            *end = 0;
        }
        if n < s.len() {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}
