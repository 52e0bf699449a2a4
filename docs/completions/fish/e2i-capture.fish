complete -c e2i-capture -l format -d 'Image format [default: normal for a file, stream for stdout]' -r -f -a "normal\t''
raw\t''
qcow2\t''
stream\t''"
complete -c e2i-capture -l seed -d 'Seed for --scramble' -r
complete -c e2i-capture -s b -l superblock -d 'Read the filesystem through the backup superblock at block N (needs -B)' -r
complete -c e2i-capture -s B -l blocksize -d 'Block size to use with -b' -r
complete -c e2i-capture -s o -l offset -d 'Byte offset of the filesystem inside SOURCE (suffixes K, M, G, ...: powers of 1024)' -r
complete -c e2i-capture -s P -l partition -d 'The filesystem in partition N of a GPT or MBR partition table on SOURCE (1-based; MBR logical partitions from 5, as Linux numbers them; 0: a disk without a table). Nothing past the partition\'s end is read unless --past-partition-end. Not with -o' -r
complete -c e2i-capture -l compress -d 'qcow2 only: compressed clusters, deflate (the default) or zstd (qcow2 v3); needs a seekable new file' -r -f -a "deflate\t'Deflate (zlib type): every qemu-img reads it (stock e2image reads no compressed clusters)'
zstd\t'zstd (qcow2 v3 compression type 1): faster and smaller; qemu-img 5.1 and later read it'"
complete -c e2i-capture -l backing -d 'qcow2 only: write an overlay (qcow2 v3) on FILE, a previous capture (qcow2 or raw): only clusters that differ from FILE\'s backing chain are stored. FILE is recorded as given (a relative name is found from OUTPUT\'s folder, as qemu-img finds it), with the digest of its chain\'s disk: e2i readers refuse a chain changed since' -r -F
complete -c e2i-capture -l stream-version -d 'Stream only: the stream format version. 2 (the default) reads SOURCE once and checksums with BLAKE3; 1 is for e2i tools that read only version 1 (SOURCE\'s selected blocks are read twice; SHA-256)' -r
complete -c e2i-capture -s r -d 'Raw image (same as --format raw; e2image -r)'
complete -c e2i-capture -s Q -d 'qcow2 image (same as --format qcow2; e2image -Q)'
complete -c e2i-capture -s a -l all-data -d 'Include regular-file data (raw, qcow2, stream)'
complete -c e2i-capture -s s -l scramble -d 'Scramble names and other private strings'
complete -c e2i-capture -l allow-scrambled -d 'Write a scrambled image (-s, or a SOURCE that is itself scrambled) even over the filesystem it is taken from (an existing OUTPUT file or block device holding its UUID, such as a clone)'
complete -c e2i-capture -s f -l force -d 'Allow a source mounted read-write'
complete -c e2i-capture -l past-partition-end -d 'With -P: when the filesystem runs past the end of its partition (a partition shrunk under it), read on past that end, into what follows on SOURCE, as e2image -o would (by default nothing past it is read: zeros stand for it)'
complete -c e2i-capture -l list -d 'Print SOURCE\'s partition table, one line a partition: number, start byte, size in bytes, type, and the filesystem there (ext2/3/4, block size, block count, UUID) or `-`. With --json, a JSON array (when it fails, the one-line summary with "exit")'
complete -c e2i-capture -s p -l progress -d 'Show progress on stderr (a bar on a terminal, a line every few seconds otherwise)'
complete -c e2i-capture -l strict -d 'Stop at the first damaged structure (exit 1) instead of skipping it (exit 3)'
complete -c e2i-capture -s q -l quiet -d 'No warnings or summaries on stderr (errors are still reported)'
complete -c e2i-capture -l json -d 'Print a one-line JSON summary (stdout, or stderr when OUTPUT is `-`)'
complete -c e2i-capture -s h -l help -d 'Print help (see more with \'--help\')'
complete -c e2i-capture -s V -l version -d 'Print version'
