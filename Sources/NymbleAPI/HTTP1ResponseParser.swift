import NIOCore

/// Reads the HTTP/1.1 answers of one connection from its bytes, one answer at a time: the status, the
/// `Retry-After` header, whether the connection may carry another request, and the body up to a cap.
///
/// Why not NIOHTTP1's `HTTPResponseDecoder` (llhttp), which the client used before: profiled on the hot path
/// (BENCHMARKS.md, "Hot path, fourth pass"), decoding was about 11% of the runner's CPU per pair. It builds an
/// `HTTPResponseHead` holding every header as strings, then a body part and an end part, each sent through
/// the channel pipeline, and it needs the request heads written through the pipeline too; the client needs
/// four values. This parser reads them from the bytes in place.
///
/// It follows RFC 9112 for what a client must handle: a body sized by `Content-Length`, `chunked` (chunk
/// extensions and trailers skipped), or read until the server closes; interim 1xx answers skipped; 204 and 304
/// without a body; `Connection` tokens and HTTP/1.0's keep-alive. It is strict where leniency would let one
/// answer be read as another: lines end in CRLF, no folded header lines, one `Content-Length` value, and an
/// answer carrying both `Transfer-Encoding` and `Content-Length` closes its connection after it.
struct HTTP1ResponseParser {
    /// Why the bytes cannot be read as an answer; the connection cannot carry another request.
    enum Failure: Error, Equatable {
        /// Not an HTTP/1.x answer (or a head larger than ``maximumHeadBytes``).
        case invalid
        /// The body is larger than the cap.
        case tooLarge
    }

    /// The most bytes a head (status line and headers) or a chunked body's trailers may take.
    static let maximumHeadBytes = 64 * 1024
    /// The most bytes a chunk-size line may take (its extensions included).
    static let maximumChunkLineBytes = 4 * 1024

    private enum State {
        /// Looking for the end of a head; `scanned` bytes are known not to hold it.
        case head(scanned: Int)
        case sized(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        /// The CRLF that ends a chunk's data.
        case chunkEnd
        /// Trailer lines after the last chunk, `read` bytes of them so far.
        case trailers(read: Int)
        case untilClose
    }

    private let maximumBodyBytes: Int
    private var state = State.head(scanned: 0)
    /// The answer being read: its head's values, and the body so far.
    private var answer = Self.empty
    private static let empty = HTTP1Answer(status: 0, retryAfter: nil, body: ByteBuffer(), keepAlive: true)

    init(maximumBodyBytes: Int) { self.maximumBodyBytes = maximumBodyBytes }

    /// Reads from `buffer` up to the end of the next answer and returns it; or reads what it can, leaves the
    /// bytes of an unfinished line in `buffer` (the caller appends the next bytes to them) and returns nil.
    mutating func read(_ buffer: inout ByteBuffer) throws(Failure) -> HTTP1Answer? {
        while buffer.readableBytes > 0 {
            switch state {
            case .head(let scanned):
                guard let (head, length) = try Self.head(in: buffer, scanned: scanned) else {
                    guard buffer.readableBytes <= Self.maximumHeadBytes else { throw .invalid }
                    // A line ended by a bare LF would never meet the blank line: fail now, not at the timeout.
                    guard !Self.hasBareLineFeed(buffer, from: scanned) else { throw .invalid }
                    state = .head(scanned: max(0, buffer.readableBytes - 3))
                    return nil
                }
                guard length <= Self.maximumHeadBytes else { throw .invalid }
                buffer.moveReaderIndex(forwardBy: length)
                if let answer = try begin(head) { return answer }
            case .sized(let remaining):
                let taken = take(from: &buffer, upTo: remaining)
                if taken == remaining { return finish() }
                state = .sized(remaining: remaining - taken)
            case .chunkSize:
                guard let line = try Self.line(in: buffer, limit: Self.maximumChunkLineBytes) else { return nil }
                let size = try Self.chunkSize(buffer.getSlice(at: buffer.readerIndex, length: line)!)
                buffer.moveReaderIndex(forwardBy: line + 2)
                if size == 0 {
                    state = .trailers(read: 0)
                } else {
                    guard answer.body.readableBytes + size <= maximumBodyBytes else { throw .tooLarge }
                    state = .chunkData(remaining: size)
                }
            case .chunkData(let remaining):
                let taken = take(from: &buffer, upTo: remaining)
                state = taken == remaining ? .chunkEnd : .chunkData(remaining: remaining - taken)
            case .chunkEnd:
                guard buffer.readableBytes >= 2 else { return nil }
                guard buffer.readInteger(as: UInt16.self) == 0x0D0A else { throw .invalid }
                state = .chunkSize
            case .trailers(let read):
                guard let line = try Self.line(in: buffer, limit: Self.maximumHeadBytes - read) else { return nil }
                buffer.moveReaderIndex(forwardBy: line + 2)
                if line == 0 { return finish() }
                state = .trailers(read: read + line + 2)
            case .untilClose:
                _ = take(from: &buffer, upTo: Int.max)
                guard answer.body.readableBytes <= maximumBodyBytes else { throw .tooLarge }
            }
        }
        return nil
    }

    /// The answer whose body ends where the connection closed, if one was being read that way; nil when the
    /// connection closed between answers or in the middle of one.
    mutating func readAtClose() -> HTTP1Answer? {
        guard case .untilClose = state else { return nil }
        return finish()
    }

    /// Up to `limit` bytes of body taken from `buffer`; the count taken.
    private mutating func take(from buffer: inout ByteBuffer, upTo limit: Int) -> Int {
        let count = min(limit, buffer.readableBytes)
        // One allocation for a sized body (or a chunk).
        if answer.body.capacity == 0, limit != .max { answer.body.reserveCapacity(limit) }
        answer.body.writeImmutableBuffer(buffer.readSlice(length: count)!)
        return count
    }

    /// Starts the answer `head` begins: the answer itself when it has no body; nil (read on) otherwise or for
    /// an interim answer.
    private mutating func begin(_ head: Head) throws(Failure) -> HTTP1Answer? {
        switch head.status {
        case 101:
            throw .invalid  // no upgrade was asked for
        case 100...199:
            state = .head(scanned: 0)  // interim: the real answer follows
            return nil
        default:
            break
        }
        answer = HTTP1Answer(
            status: head.status,
            retryAfter: head.retryAfter,
            body: ByteBuffer(),
            keepAlive: head.http11 ? !head.close : head.keepAlive && !head.close
        )
        if head.status == 204 || head.status == 304 { return finish() }
        switch (head.transferEncoding, head.contentLength) {
        case (.chunked, let length):
            if length != nil { answer.keepAlive = false }  // both framings: read as chunked, trust nothing after
            state = .chunkSize
        case (.other, _):
            answer.keepAlive = false
            state = .untilClose
        case (.none, let length?):
            guard length <= maximumBodyBytes else { throw .tooLarge }
            if length == 0 { return finish() }
            state = .sized(remaining: length)
        case (.none, nil):
            answer.keepAlive = false
            state = .untilClose
        }
        return nil
    }

    private mutating func finish() -> HTTP1Answer {
        defer {
            state = .head(scanned: 0)
            answer = Self.empty
        }
        return answer
    }
}

// MARK: - Reading heads and lines

extension HTTP1ResponseParser {
    /// What the client reads from a head.
    struct Head {
        enum TransferEncoding { case none, chunked, other }

        var status = 0
        var http11 = true
        var contentLength: Int?
        var transferEncoding = TransferEncoding.none
        var close = false
        var keepAlive = false
        var retryAfter: String?
    }

    private static let cr = UInt8(ascii: "\r")
    private static let lf = UInt8(ascii: "\n")

    /// The head at the start of `buffer` and its length (through the blank line), or nil when its end is not
    /// there yet; the first `scanned` bytes are known not to hold the end.
    static func head(in buffer: ByteBuffer, scanned: Int) throws(Failure) -> (Head, Int)? {
        let parsed = buffer.withUnsafeReadableBytes { bytes -> Result<(Head, Int)?, Failure> in
            guard let end = blankLine(in: bytes, from: scanned) else { return .success(nil) }
            do throws(Failure) {
                return .success((try parseHead(UnsafeRawBufferPointer(rebasing: bytes[..<end])), end + 4))
            } catch {
                return .failure(error)
            }
        }
        return try parsed.get()
    }

    /// Where the first CRLF CRLF at or after `start` begins.
    private static func blankLine(in bytes: UnsafeRawBufferPointer, from start: Int) -> Int? {
        guard bytes.count >= 4 else { return nil }
        var index = start
        while index <= bytes.count - 4 {
            if bytes[index + 3] != lf {
                index += bytes[index + 3] == cr ? 1 : 4  // no CRLF CRLF can end at index + 3
                continue
            }
            if bytes[index] == cr, bytes[index + 1] == lf, bytes[index + 2] == cr { return index }
            index += 1
        }
        return nil
    }

    /// Parses a head without its final CRLF CRLF: the status line, then header lines.
    private static func parseHead(_ bytes: UnsafeRawBufferPointer) throws(Failure) -> Head {
        var head = Head()
        var lineStart = 0
        var first = true
        while lineStart <= bytes.count {
            var lineEnd = lineStart
            while lineEnd < bytes.count, bytes[lineEnd] != cr { lineEnd += 1 }
            if lineEnd < bytes.count {  // a CR inside the head must start a CRLF
                guard lineEnd + 1 < bytes.count, bytes[lineEnd + 1] == lf else { throw .invalid }
            }
            let line = UnsafeRawBufferPointer(rebasing: bytes[lineStart..<lineEnd])
            if line.contains(lf) { throw .invalid }
            if first {
                try statusLine(line, into: &head)
                first = false
            } else {
                try header(line, into: &head)
            }
            lineStart = lineEnd + 2
        }
        return head
    }

    /// `HTTP/1.x SSS reason`
    private static func statusLine(_ line: UnsafeRawBufferPointer, into head: inout Head) throws(Failure) {
        let prefix: StaticString = "HTTP/1."
        guard line.count >= 12 else { throw .invalid }
        for index in 0..<7 where line[index] != prefix.utf8Start[index] { throw .invalid }
        switch line[7] {
        case UInt8(ascii: "1"): head.http11 = true
        case UInt8(ascii: "0"): head.http11 = false
        default: throw .invalid
        }
        guard line[8] == UInt8(ascii: " ") else { throw .invalid }
        var status = 0
        for index in 9..<12 {
            let digit = line[index] &- UInt8(ascii: "0")
            guard digit < 10 else { throw .invalid }
            status = status * 10 + Int(digit)
        }
        guard status >= 100, line.count == 12 || line[12] == UInt8(ascii: " ") else { throw .invalid }
        head.status = status
    }

    /// `name: value`, the value's surrounding blanks dropped; only the names the client reads are looked at.
    private static func header(_ line: UnsafeRawBufferPointer, into head: inout Head) throws(Failure) {
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0 else { throw .invalid }
        let name = UnsafeRawBufferPointer(rebasing: line[..<colon])
        // A token: no blank before the colon, no folded line (a line starting with a blank).
        guard name.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { throw .invalid }
        let value = trimmed(UnsafeRawBufferPointer(rebasing: line[(colon + 1)...]))
        switch name.count {
        case 10 where equalsLowercased(name, "connection"):
            forEachToken(in: value) { token in
                if equalsLowercased(token, "close") { head.close = true }
                if equalsLowercased(token, "keep-alive") { head.keepAlive = true }
            }
        case 11 where equalsLowercased(name, "retry-after"):
            if head.retryAfter == nil { head.retryAfter = String(decoding: value, as: UTF8.self) }
        case 14 where equalsLowercased(name, "content-length"):
            guard !value.isEmpty, value.count <= 18 else { throw .invalid }
            var length = 0
            for byte in value {
                let digit = byte &- UInt8(ascii: "0")
                guard digit < 10 else { throw .invalid }
                length = length * 10 + Int(digit)
            }
            guard head.contentLength == nil || head.contentLength == length else { throw .invalid }
            head.contentLength = length
        case 17 where equalsLowercased(name, "transfer-encoding"):
            // The last coding decides: `chunked` frames the body, anything else is read until close.
            var chunked = false
            forEachToken(in: value) { chunked = equalsLowercased($0, "chunked") }
            head.transferEncoding = chunked ? .chunked : .other
        default:
            break
        }
    }

    /// Calls `body` with each comma-separated element of a header's value, its blanks dropped; empty elements
    /// (`a, , b,`) are skipped, as RFC 9110 asks of a list's recipient.
    private static func forEachToken(in value: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Void) {
        var start = 0
        while start <= value.count {
            var end = start
            while end < value.count, value[end] != UInt8(ascii: ",") { end += 1 }
            let token = trimmed(UnsafeRawBufferPointer(rebasing: value[start..<end]))
            if !token.isEmpty { body(token) }
            start = end + 1
        }
    }

    /// Whether `buffer` holds an LF that does not follow a CR at or after `start` (the bytes before were looked at).
    private static func hasBareLineFeed(_ buffer: ByteBuffer, from start: Int) -> Bool {
        buffer.withUnsafeReadableBytes { bytes in
            for index in min(start, bytes.count)..<bytes.count
            where bytes[index] == lf && (index == 0 || bytes[index - 1] != cr) {
                return true
            }
            return false
        }
    }

    private static func trimmed(_ bytes: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        var start = 0
        var end = bytes.count
        while start < end, bytes[start] == 0x20 || bytes[start] == 0x09 { start += 1 }
        while end > start, bytes[end - 1] == 0x20 || bytes[end - 1] == 0x09 { end -= 1 }
        return UnsafeRawBufferPointer(rebasing: bytes[start..<end])
    }

    /// Whether `bytes`, ASCII letters lowercased, are `lowercase`.
    private static func equalsLowercased(_ bytes: UnsafeRawBufferPointer, _ lowercase: StaticString) -> Bool {
        guard bytes.count == lowercase.utf8CodeUnitCount else { return false }
        for index in 0..<bytes.count {
            var byte = bytes[index]
            if byte >= UInt8(ascii: "A"), byte <= UInt8(ascii: "Z") { byte |= 0x20 }
            if byte != lowercase.utf8Start[index] { return false }
        }
        return true
    }

    /// The length of the line at the start of `buffer` (without its CRLF), or nil when its end is not there yet.
    private static func line(in buffer: ByteBuffer, limit: Int) throws(Failure) -> Int? {
        // The first CR or LF: an LF first is a line ended without its CR.
        let found = buffer.withUnsafeReadableBytes { bytes -> Int? in
            bytes.firstIndex { $0 == cr || $0 == lf }
        }
        if let found, buffer.getInteger(at: buffer.readerIndex + found, as: UInt8.self) == lf { throw .invalid }
        guard let found else {
            guard buffer.readableBytes <= limit else { throw .invalid }
            return nil
        }
        guard found <= limit else { throw .invalid }
        guard buffer.readableBytes >= found + 2 else { return nil }
        guard buffer.getInteger(at: buffer.readerIndex + found + 1, as: UInt8.self) == lf else { throw .invalid }
        return found
    }

    /// A chunk-size line's size: hex digits, then nothing or extensions (`;…`, blanks allowed before).
    private static func chunkSize(_ line: ByteBuffer) throws(Failure) -> Int {
        let bytes = line.readableBytesView
        var size = 0
        var digits = 0
        for byte in bytes {
            let value: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): value = byte - UInt8(ascii: "A") + 10
            case UInt8(ascii: ";"), 0x20, 0x09:
                guard digits > 0 else { throw .invalid }
                return size
            default: throw .invalid
            }
            digits += 1
            guard digits <= 15 else { throw .invalid }
            size = size << 4 | Int(value)
        }
        guard digits > 0 else { throw .invalid }
        return size
    }
}
