import EnrichQueue
import ServiceLifecycle

public enum Y4 {}
