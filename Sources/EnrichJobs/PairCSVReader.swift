import EnrichQueue
import Foundation

/// Streams `(OrganizationId, UserId)` pairs from a CSV file with the header `OrganizationId,UserId`.
///
/// RFC 4180: fields may be double-quoted (with `""` for a quote), lines end in LF or CRLF, a UTF-8 BOM is
/// ignored, and blank lines are skipped. Reads in 64 KiB blocks so memory stays flat for any file size.
/// Every problem is an ``InputError`` naming the file, line and field: a wrong header, a missing or
/// extra field, an empty or whitespace-only id, an id over 256 characters, a NUL byte, bad UTF-8, or an
/// unterminated quote.
public final class PairCSVReader {
    public static let header = ["OrganizationId", "UserId"]
    public static let maximumIDLength = 256

    private let fileName: String
    private let handle: FileHandle
    private var buffer: [UInt8] = []
    private var position = 0
    private var atEOF = false
    private var line = 1
    private var headerChecked = false

    /// Reads from `path`, or standard input when `path` is `-`.
    public init(path: String) throws(InputError) {
        if path == "-" {
            self.fileName = "<stdin>"
            self.handle = FileHandle.standardInput
        } else {
            self.fileName = path
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                throw InputError(file: path, line: nil, problem: "no such file")
            }
            if isDirectory.boolValue {
                throw InputError(file: path, line: nil, problem: "is a directory, not a CSV file")
            }
            guard let handle = FileHandle(forReadingAtPath: path) else {
                throw InputError(file: path, line: nil, problem: "cannot open the file for reading (permissions?)")
            }
            self.handle = handle
        }
    }

    /// Reads from an in-memory document (tests, `--from-csv-string`).
    public init(name: String, data: Data) {
        self.fileName = name
        self.handle = FileHandle.nullDevice
        self.buffer = Array(data)
        self.atEOF = true
    }

    /// The next up-to-`size` pairs, or nil at the end of the input.
    public func nextChunk(size: Int = 10_000) throws(InputError) -> [Pair]? {
        try checkHeaderOnce()
        var chunk: [Pair] = []
        chunk.reserveCapacity(min(size, 1024))
        while chunk.count < size, let (recordLine, fields) = try nextRecord() {
            chunk.append(try pair(from: fields, line: recordLine))
        }
        return chunk.isEmpty ? nil : chunk
    }

    /// Reads the whole input (for small files and tests).
    public func readAll() throws(InputError) -> [Pair] {
        var all: [Pair] = []
        while let chunk = try nextChunk() { all += chunk }
        return all
    }

    private func checkHeaderOnce() throws(InputError) {
        guard !headerChecked else { return }
        headerChecked = true
        try fill()
        if buffer.count >= 3, buffer[0] == 0xEF, buffer[1] == 0xBB, buffer[2] == 0xBF { position = 3 }
        guard let (headerLine, fields) = try nextRecord() else {
            throw InputError(
                file: fileName,
                line: 1,
                problem: "the file is empty; expected the header OrganizationId,UserId"
            )
        }
        let names = try fields.map { (field) throws(InputError) in
            try text(field, line: headerLine, field: "header").trimmingCharacters(in: .whitespaces)
        }
        guard names == Self.header else {
            throw InputError(
                file: fileName,
                line: headerLine,
                field: "header",
                problem: "expected OrganizationId,UserId, found \(names.joined(separator: ","))"
            )
        }
    }

    private func pair(from fields: [[UInt8]], line: Int) throws(InputError) -> Pair {
        guard fields.count == 2 else {
            let problem =
                fields.count < 2
                ? "missing field: expected 2 fields (OrganizationId,UserId), found \(fields.count)"
                : "expected 2 fields (OrganizationId,UserId), found \(fields.count)"
            throw InputError(file: fileName, line: line, field: fields.count < 2 ? "UserId" : nil, problem: problem)
        }
        return Pair(
            organizationId: try identifier(fields[0], line: line, field: "OrganizationId"),
            userId: try identifier(fields[1], line: line, field: "UserId")
        )
    }

    private func identifier(_ bytes: [UInt8], line: Int, field: String) throws(InputError) -> String {
        let value = try text(bytes, line: line, field: field)
        if value.unicodeScalars.allSatisfy(\.properties.isWhitespace) {
            throw InputError(file: fileName, line: line, field: field, problem: "is empty or whitespace only")
        }
        if value.unicodeScalars.count > Self.maximumIDLength {
            throw InputError(
                file: fileName,
                line: line,
                field: field,
                problem: "is \(value.unicodeScalars.count) characters long; at most \(Self.maximumIDLength) allowed"
            )
        }
        return value
    }

    private func text(_ bytes: [UInt8], line: Int, field: String) throws(InputError) -> String {
        if bytes.contains(0) {
            throw InputError(file: fileName, line: line, field: field, problem: "contains a NUL byte")
        }
        guard let value = String(validating: bytes, as: UTF8.self) else {
            throw InputError(file: fileName, line: line, field: field, problem: "is not valid UTF-8")
        }
        return value
    }

    // MARK: Byte-level record parsing

    private func fill() throws(InputError) {
        guard !atEOF else { return }
        if position > 0 {
            buffer.removeSubrange(0..<position)
            position = 0
        }
        let data: Data?
        do {
            data = try handle.read(upToCount: 1 << 16)
        } catch {
            throw InputError(file: fileName, line: line, problem: "read failed: \(error.localizedDescription)")
        }
        if let data, !data.isEmpty {
            buffer.append(contentsOf: data)
        } else {
            atEOF = true
        }
    }

    private func nextByte() throws(InputError) -> UInt8? {
        if position >= buffer.count {
            try fill()
            if position >= buffer.count { return nil }
        }
        defer { position += 1 }
        return buffer[position]
    }

    private func peekByte() throws(InputError) -> UInt8? {
        if position >= buffer.count {
            try fill()
            if position >= buffer.count { return nil }
        }
        return buffer[position]
    }

    /// The next non-blank record and the line it starts on, or nil at the end.
    private func nextRecord() throws(InputError) -> (Int, [[UInt8]])? {
        while true {
            guard try peekByte() != nil else { return nil }
            let startLine = line
            var fields: [[UInt8]] = []
            var field: [UInt8] = []
            var quoted = false
            var wasQuoted = false
            recordLoop: while true {
                guard let byte = try nextByte() else {
                    if quoted {
                        throw InputError(
                            file: fileName,
                            line: startLine,
                            problem: "a quoted field is not closed before the end"
                        )
                    }
                    break recordLoop
                }
                if quoted {
                    if byte == UInt8(ascii: "\"") {
                        if try peekByte() == UInt8(ascii: "\"") {
                            _ = try nextByte()
                            field.append(byte)
                        } else {
                            quoted = false
                        }
                    } else {
                        if byte == UInt8(ascii: "\n") { line += 1 }
                        field.append(byte)
                    }
                    continue
                }
                switch byte {
                case UInt8(ascii: ","):
                    fields.append(field)
                    field = []
                    wasQuoted = false
                case UInt8(ascii: "\n"):
                    line += 1
                    break recordLoop
                case UInt8(ascii: "\r"):
                    if try peekByte() == UInt8(ascii: "\n") { continue }
                    line += 1
                    break recordLoop
                case UInt8(ascii: "\"") where field.isEmpty && !wasQuoted:
                    quoted = true
                    wasQuoted = true
                default:
                    field.append(byte)
                }
            }
            fields.append(field)
            if fields.count == 1 && fields[0].isEmpty && !wasQuoted { continue }
            return (startLine, fields)
        }
    }
}
