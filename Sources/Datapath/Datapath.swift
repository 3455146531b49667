/// BPF objects and maps.
public enum Datapath {}
