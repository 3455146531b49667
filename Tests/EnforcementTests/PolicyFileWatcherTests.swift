import Synchronization
import Testing
@testable import Enforcement
#if canImport(Glibc)
import Glibc
#endif

/// The policy file watcher against real files in a temporary directory.
@Suite struct PolicyFileWatcherTests {
    @Test func aFileWrittenInPlaceIsOneChange() {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let file = directory.write("policy.yaml", "a: 1\n")
        let watcher = PolicyFileWatcher(files: { [file] })
        #expect(!watcher.check(), "nothing changed yet")
        directory.write("policy.yaml", "a: 22\n")
        #expect(watcher.check())
        #expect(!watcher.check(), "one change is reported once")
    }

    @Test func aFileRenamedOverTheOldOneIsOneChangeEvenWithTheSameTimeAndSize() {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let file = directory.write("policy.yaml", "a: 1\n")
        let watcher = PolicyFileWatcher(files: { [file] })
        directory.replace("policy.yaml", with: "a: 2\n", keepingTime: true)
        #expect(watcher.check(), "another inode under the same name")
        #expect(!watcher.check())
    }

    @Test func filesAddedToOrRemovedFromADirectoryAreChanges() {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        directory.write("a.yaml", "a: 1\n")
        let watcher = PolicyFileWatcher(files: { PolicyFiles.files(at: directory.path) })
        directory.write("b.yaml", "b: 1\n")
        #expect(watcher.check())
        directory.write("notes.txt", "not a policy\n")
        directory.write("endpoints.yaml", "endpoints: []\n")
        #expect(!watcher.check(), "files that are not policies are not watched in a directory")
        unlink(directory.file("a.yaml"))
        #expect(watcher.check())
        #expect(!watcher.check())
    }

    @Test func aMissingFileThatAppearsIsAChange() {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let file = directory.file("endpoints.yaml")
        let watcher = PolicyFileWatcher(files: { [file] })
        #expect(!watcher.check())
        directory.write("endpoints.yaml", "endpoints: []\n")
        #expect(watcher.check())
    }

    @Test func theWatcherThreadCallsOncePerReplacement() {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let file = directory.write("policy.yaml", "a: 1\n")
        let watcher = PolicyFileWatcher(files: { [file] })
        let changes = Atomic<Int>(0)
        watcher.start(every: 5_000_000) { changes.add(1, ordering: .relaxed) }
        defer { watcher.stop() }
        directory.replace("policy.yaml", with: "a: 2\n")
        #expect(eventually { changes.load(ordering: .relaxed) >= 1 })
        usleep(100_000)  // twenty more checks
        #expect(changes.load(ordering: .relaxed) == 1)
    }
}
