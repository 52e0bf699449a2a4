complete -c e2i-to-qcow2 -l compress -d 'Compressed clusters, deflate (the default) or zstd (qcow2 v3); needs a seekable new OUTPUT file' -r -f -a "deflate\t'Deflate (zlib type): every qemu-img reads it (stock e2image reads no compressed clusters)'
zstd\t'zstd (qcow2 v3 compression type 1): faster and smaller; qemu-img 5.1 and later read it'"
complete -c e2i-to-qcow2 -l backing -d 'Write an overlay (qcow2 v3) on FILE, a previous image (qcow2 or raw): only clusters that differ from FILE\'s backing chain are stored. FILE is recorded as given (a relative name is found from OUTPUT\'s folder, as qemu-img finds it), with the digest of its chain\'s disk: e2i readers refuse a chain changed since' -r -F
complete -c e2i-to-qcow2 -s a -l all-data -d 'Raw input: include regular-file data too'
complete -c e2i-to-qcow2 -s n -l dry-run -d 'Print the image layout that would be written; create nothing'
complete -c e2i-to-qcow2 -s p -l progress -d 'Show progress on stderr (a bar on a terminal, a line every few seconds otherwise)'
complete -c e2i-to-qcow2 -l strict -d 'Stop at the first damaged structure (exit 1) instead of skipping it (exit 3)'
complete -c e2i-to-qcow2 -s q -l quiet -d 'No warnings or summaries on stderr (errors are still reported)'
complete -c e2i-to-qcow2 -l json -d 'Print a one-line JSON summary (stdout, or stderr when OUTPUT is `-`)'
complete -c e2i-to-qcow2 -s h -l help -d 'Print help (see more with \'--help\')'
complete -c e2i-to-qcow2 -s V -l version -d 'Print version'
