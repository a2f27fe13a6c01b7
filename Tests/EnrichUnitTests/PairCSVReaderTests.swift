import EnrichJobs
import EnrichQueue
import Foundation
import Testing

@Suite("CSV pair reader")
struct PairCSVReaderTests {
    func read(_ text: String) throws -> [Pair] {
        try PairCSVReader(name: "in.csv", data: Data(text.utf8)).readAll()
    }

    @Test("reads quoted fields, CRLF line ends, a BOM, and skips blank lines")
    func readsRFC4180() throws {
        let pairs = try read("\u{FEFF}OrganizationId,UserId\r\n\"o,1\",\"u \"\"1\"\"\"\r\n\r\no2,u2\n")
        #expect(pairs == [Pair(organizationId: "o,1", userId: "u \"1\""), Pair(organizationId: "o2", userId: "u2")])
    }

    @Test("reads a header-only file as no pairs")
    func headerOnly() throws {
        #expect(try read("OrganizationId,UserId\n").isEmpty)
    }

    @Test(
        "rejects bad input naming line and field",
        arguments: [
            ("", "in.csv:1: the file is empty; expected the header OrganizationId,UserId"),
            (
                "UserId,OrganizationId\n",
                "in.csv:1: header: expected OrganizationId,UserId, found UserId,OrganizationId"
            ),
            (
                "OrganizationId,UserId\na,b\nc\n",
                "in.csv:3: UserId: missing field: expected 2 fields (OrganizationId,UserId), found 1"
            ),
            ("OrganizationId,UserId\n\"a\nb\",c\nd,\"\"\n", "in.csv:4: UserId: is empty or whitespace only"),
            ("OrganizationId,UserId\na,\"b\n", "in.csv:2: a quoted field is not closed before the end"),
            ("OrganizationId,UserId\na,b\u{0}c\n", "in.csv:2: UserId: contains a NUL byte"),
        ]
    )
    func rejectsBadInput(text: String, message: String) throws {
        let error = #expect(throws: InputError.self) { try read(text) }
        #expect(error?.description == message)
    }

    @Test("accepts an id of exactly 256 characters and rejects 257")
    func lengthLimit() throws {
        let ok = String(repeating: "é", count: 256)
        #expect(try read("OrganizationId,UserId\no,\(ok)\n").first?.userId == ok)
        let error = #expect(throws: InputError.self) { try read("OrganizationId,UserId\no,\(ok)x\n") }
        #expect(error?.field == "UserId" && error?.line == 2)
    }

    @Test("rejects invalid UTF-8 with its line")
    func invalidUTF8() throws {
        var data = Data("OrganizationId,UserId\nok,fine\n".utf8)
        data.append(contentsOf: [0xFF, 0x2C, 0x61, 0x0A])
        let error = #expect(throws: InputError.self) { try PairCSVReader(name: "x.csv", data: data).readAll() }
        #expect(error?.description == "x.csv:3: OrganizationId: is not valid UTF-8")
    }

    @Test("a missing file is named in the error")
    func missingFile() {
        let error = #expect(throws: InputError.self) { try PairCSVReader(path: "/nonexistent/pairs.csv") }
        #expect(error?.description == "/nonexistent/pairs.csv: no such file")
    }

    @Test("a directory given as the CSV is named as one, in plain words")
    func directory() {
        let path = FileManager.default.temporaryDirectory.path
        let error = #expect(throws: InputError.self) { try PairCSVReader(path: path) }
        #expect(error?.description == "\(path): is a directory, not a CSV file")
    }
}
