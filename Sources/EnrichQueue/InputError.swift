/// Bad input from a file the user gave us, with where it is: `file:line: field: problem`.
public struct InputError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The file name as given (`<stdin>` for standard input).
    public let file: String
    /// 1-based line number, when the problem is on a line.
    public let line: Int?
    /// The field or key at fault, when there is one.
    public let field: String?
    /// What is wrong, in words.
    public let problem: String

    public init(file: String, line: Int?, field: String? = nil, problem: String) {
        self.file = file
        self.line = line
        self.field = field
        self.problem = problem
    }

    public var description: String {
        var location = file
        if let line { location += ":\(line)" }
        if let field { return "\(location): \(field): \(problem)" }
        return "\(location): \(problem)"
    }
}
