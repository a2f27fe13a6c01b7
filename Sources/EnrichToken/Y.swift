import NymbleAPI

public enum Y2 {}
