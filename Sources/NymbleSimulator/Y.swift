import Hummingbird

public enum Y5 {}
