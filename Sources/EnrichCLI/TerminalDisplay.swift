import Foundation
import Synchronization

/// Standard error as one display: log lines scroll above a progress bar that stays on the last line.
///
/// Every write to standard error (log lines of both formats, the bar) goes through here under one lock, so a
/// log line is never written into the middle of the bar: the bar is cleared, the line written whole, and the
/// bar redrawn below it. The bar is cut to the terminal's width, since a bar that wraps could no longer be
/// cleared with one carriage return.
final class TerminalDisplay: Sendable {
    static let standardError = TerminalDisplay()

    private struct State {
        /// The bar on screen now, if any.
        var bar: String?
    }

    private let state = Mutex(State())
    private let write: @Sendable (String) -> Void

    init(write: @escaping @Sendable (String) -> Void = { FileHandle.standardError.write(Data($0.utf8)) }) {
        self.write = write
    }

    /// Carriage return, then erase the line.
    private static let clearLine = "\r\u{1B}[2K"

    /// Writes a whole log line (ending in a newline) above the bar.
    func log(_ line: String) {
        state.withLock { state in
            guard let bar = state.bar else { return write(line) }
            write(Self.clearLine + line + bar)
        }
    }

    /// Shows `text` as the bar, replacing the one on screen.
    func showBar(_ text: String) {
        let bar = Self.fit(text, columns: Self.columns())
        state.withLock { state in
            state.bar = bar
            write(Self.clearLine + bar)
        }
    }

    /// Leaves the last bar on screen as an ordinary line; later lines start below it.
    func endBar() {
        state.withLock { state in
            guard state.bar != nil else { return }
            state.bar = nil
            write("\n")
        }
    }

    /// `text` cut to one line of `columns` (with an ellipsis), never wrapping.
    static func fit(_ text: String, columns: Int) -> String {
        let width = max(10, columns - 1)
        guard text.count > width else { return text }
        return String(text.prefix(width - 1)) + "…"
    }

    /// The width of the terminal on standard error (80 when it cannot be told).
    static func columns() -> Int {
        var size = winsize()
        guard ioctl(STDERR_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 else { return 80 }
        return Int(size.ws_col)
    }
}
