complete -c e2i-to-raw -s O -l dest-offset -d 'Write the image at this byte offset of OUTPUT, updating it in place' -r
complete -c e2i-to-raw -s c -l check -d 'Compare before writing; skip blocks OUTPUT already holds'
complete -c e2i-to-raw -s n -l dry-run -d 'Print the blocks that would be written; create and change nothing'
complete -c e2i-to-raw -s p -l progress -d 'Show progress on stderr (a bar on a terminal, a line every few seconds otherwise)'
complete -c e2i-to-raw -s a -l all-data -d 'Raw filesystem input: include regular-file data'
complete -c e2i-to-raw -s q -l quiet -d 'No warnings or summaries on stderr (errors are still reported)'
complete -c e2i-to-raw -l json -d 'Print a one-line JSON summary (stdout, or stderr when OUTPUT is `-`)'
complete -c e2i-to-raw -s h -l help -d 'Print help (see more with \'--help\')'
complete -c e2i-to-raw -s V -l version -d 'Print version'
